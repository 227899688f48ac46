"""Raw inputs from what a person hands over: JSON arrays, image files, CSV and NPY files, folders of
images. Everything ends as a float array [N, *RawFormat.shape] on the dataset's raw scale (see
moelab.data.preprocessing), or as a BadInput naming what is wrong.

Pictures are converted as the datasets were made: grey datasets hold bright ink on a dark
background, so a picture with a light background (paper, a drawing canvas) is inverted; digits and
MNIST digits are cropped to their ink, scaled to the frame the dataset's digits fill and centred;
then resized by area averaging (how the 8x8 digits were counted from 32x32 bitmaps) and scaled to
the raw range (0-16 for digits, 0-1 for the torchvision datasets).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from moelab.data.preprocessing import RawFormat
from moelab.serve.errors import BadInput, TooLarge

MAX_INPUTS = 4096  # per request or command: bounds the memory one call can take
MAX_IMAGE_PIXELS = 40_000_000  # larger pictures are refused before they are decoded
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
INVERT_CHOICES = ("auto", "yes", "no")


def array_from_json(value) -> np.ndarray:
    """Nested lists of numbers -> float array (any shape; `batch` checks it against the dataset)."""
    if value is None:
        raise BadInput("no inputs: give 'inputs' as a JSON array of numbers")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged lists
        raise BadInput(f"inputs are not a regular array (rows of different lengths?): {error}") from None
    if array.dtype.kind not in "iuf":
        raise BadInput(f"inputs must be numbers only; got {_kind_word(array)}")
    return array.astype(np.float64)


def batch(values: np.ndarray, fmt: RawFormat, dataset: str) -> np.ndarray:
    """Check `values` against the dataset's raw format: one input or a list of them, flat or shaped,
    finite, within the raw range. Returns [N, *fmt.shape]."""
    sample, flat = tuple(fmt.shape), (math.prod(fmt.shape),)
    shape = tuple(values.shape)
    if values.size == 0:
        raise BadInput("no inputs: the array is empty")
    if shape in (sample, flat):
        values = values.reshape(1, *sample)
    elif len(shape) >= 2 and shape[1:] in (sample, flat):
        values = values.reshape(shape[0], *sample)
    else:
        raise BadInput(f"inputs have shape {list(shape)}; {dataset} takes one input of shape {list(sample)} "
                       f"(or {flat[0]} values flat), or a list of them ([N, {', '.join(map(str, sample))}] or "
                       f"[N, {flat[0]}]): {fmt.description}")
    if len(values) > MAX_INPUTS:
        raise TooLarge(f"{len(values)} inputs; at most {MAX_INPUTS} per request")
    finite = np.isfinite(values)
    if not finite.all():
        where = np.argwhere(~finite.reshape(len(values), -1))[0]
        raise BadInput(f"inputs must be finite numbers; input {where[0]} has {values.reshape(len(values), -1)[tuple(where)]} "
                       f"at position {where[1]}")
    low, high = float(values.min()), float(values.max())
    slack = 1e-6 * (fmt.high - fmt.low)
    if low < fmt.low - slack or high > fmt.high + slack:
        raise BadInput(f"inputs must be raw {dataset} values in [{fmt.low:g}, {fmt.high:g}] ({fmt.description}); "
                       f"got values from {low:g} to {high:g}. Send the values as the dataset stores them, not "
                       f"standardised or 0-255 values")
    return values


def image_to_raw(data: bytes, fmt: RawFormat, dataset: str, name: str = "image", invert: str = "auto") -> np.ndarray:
    """One picture (PNG, JPEG, ...) as one raw input of shape fmt.shape."""
    from PIL import Image, UnidentifiedImageError

    if not fmt.is_image:
        raise BadInput(f"{dataset} inputs are not images ({fmt.description}); send them as a JSON array")
    if invert not in INVERT_CHOICES:
        raise BadInput(f"invert must be one of {', '.join(INVERT_CHOICES)}; got {invert!r}")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise TooLarge(f"{name} is {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS:,} are read")
        image.load()
    except TooLarge:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadInput(f"{name} is not a picture that can be read (PNG, JPEG, GIF, BMP, WebP, TIFF): "
                       f"{type(error).__name__}") from None
    image = _on_white(image)
    if fmt.channels == 3:
        height, width = fmt.shape[1], fmt.shape[2]
        rgb = np.asarray(_resize(image.convert("RGB"), (width, height)), dtype=np.float32) / 255.0
        unit = rgb.transpose(2, 0, 1)
    else:
        height, width = fmt.shape[-2], fmt.shape[-1]
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        light_background = _border_mean(grey) > 0.5
        ink = 1.0 - grey if invert == "yes" or (invert == "auto" and light_background) else grey
        unit = _frame(ink, (height, width), fmt.drawing_box).reshape(fmt.shape)
    return (fmt.low + np.clip(unit, 0.0, 1.0) * (fmt.high - fmt.low)).astype(np.float64)


def read_input_file(path: Path, fmt: RawFormat, dataset: str, invert: str = "auto",
                    unreadable: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """The `predict` command's INPUT: a CSV (one flat input per row; a header row is skipped), an NPY
    array, one picture, or a folder of pictures. Returns ([N, *fmt.shape], a name per input). Given
    `unreadable`, a folder's pictures that cannot be read are told there and left out."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise BadInput(f"{path}: the folder holds no files")
        others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise BadInput(f"{path}: not pictures ({', '.join(IMAGE_SUFFIXES)}): {', '.join(others[:5])}")
        if len(files) > MAX_INPUTS:
            raise TooLarge(f"{path}: {len(files)} pictures; at most {MAX_INPUTS} per command")
        raws, names = [], []
        for picture in files:
            try:
                raws.append(image_to_raw(picture.read_bytes(), fmt, dataset, picture.name, invert))
                names.append(picture.name)
            except BadInput as error:
                if unreadable is None or not fmt.is_image:
                    raise
                unreadable.append(str(error))
        if not raws:
            raise BadInput(f"{path}: none of its pictures can be read: {'; '.join(unreadable)}")
        return batch(np.stack(raws), fmt, dataset), names
    if not path.is_file():
        raise BadInput(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return batch(image_to_raw(path.read_bytes(), fmt, dataset, path.name, invert), fmt, dataset), [path.name]
    if suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise BadInput(f"{path}: not a readable NPY array ({error})") from None
        if values.dtype.kind not in "iuf":
            raise BadInput(f"{path}: the array holds {values.dtype}, not numbers")
        values = batch(values.astype(np.float64), fmt, dataset)
        return values, [str(i) for i in range(len(values))]
    if suffix in (".csv", ".txt"):
        values = _read_csv(path)
        values = batch(values, fmt, dataset)
        return values, [str(i) for i in range(len(values))]
    raise BadInput(f"{path}: give a .csv, .npy, a picture ({', '.join(IMAGE_SUFFIXES)}) or a folder of pictures")


def read_prompts(path: Path) -> list[str]:
    """The `predict` command's prompts for a text model: each non-empty line of a UTF-8 text file."""
    try:
        prompts = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: not a readable UTF-8 text file ({type(error).__name__}); give one prompt per line") from None
    if not prompts:
        raise BadInput(f"{path}: holds no prompt; write one prompt per line")
    if len(prompts) > MAX_INPUTS:
        raise TooLarge(f"{path}: {len(prompts)} prompts; at most {MAX_INPUTS} per command")
    return prompts


def _read_csv(path: Path) -> np.ndarray:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: not a readable text file ({type(error).__name__})") from None
    if lines and not _numeric_row(lines[0]):
        lines = lines[1:]  # a header
    rows = []
    for number, line in enumerate(lines, start=1):
        if not _numeric_row(line):
            raise BadInput(f"{path}: row {number} is not comma-separated numbers: {line[:80]!r}")
        rows.append([float(v) for v in line.split(",")])
    if not rows:
        raise BadInput(f"{path}: no rows of numbers")
    if len({len(r) for r in rows}) > 1:
        raise BadInput(f"{path}: rows have different numbers of values ({sorted({len(r) for r in rows})})")
    return np.asarray(rows, dtype=np.float64)


def _numeric_row(line: str) -> bool:
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


def _kind_word(array: np.ndarray) -> str:
    return {"b": "true/false values", "U": "strings", "S": "strings", "O": "a mix of numbers, null, strings or "
            "numbers too large for a float"}.get(array.dtype.kind, str(array.dtype))


def _on_white(image):
    """Transparent parts (a canvas, a PNG cut-out) read as white paper."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image


def _border_mean(grey: np.ndarray) -> float:
    band = max(1, min(grey.shape) // 20)
    border = np.concatenate([grey[:band].ravel(), grey[-band:].ravel(), grey[:, :band].ravel(), grey[:, -band:].ravel()])
    return float(border.mean())


def _resize(image, size: tuple[int, int]):
    from PIL import Image

    shrinking = image.width >= size[0] and image.height >= size[1]
    return image.resize(size, Image.BOX if shrinking else Image.BILINEAR)


def _frame(ink: np.ndarray, size: tuple[int, int], box: float | None) -> np.ndarray:
    """Ink in [0, 1] resized to `size` (height, width); with `box`, cropped to the ink first, its longer
    side scaled to `box` of the frame and centred."""
    from PIL import Image

    height, width = size
    picture = ink
    if box is not None:
        rows, cols = np.nonzero(ink > 0.1 * ink.max()) if ink.max() > 0 else ((), ())
        if len(rows):  # a blank picture stays blank
            crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            side = max(crop.shape)
            picture = np.zeros((side, side), dtype=np.float32)
            top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
            picture[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    if box is None or picture is ink:
        return np.asarray(_resize(Image.fromarray(picture.astype(np.float32)), (width, height)))
    inner = (max(1, round(box * width)), max(1, round(box * height)))
    scaled = np.asarray(_resize(Image.fromarray(picture.astype(np.float32)), inner))
    framed = np.zeros((height, width), dtype=np.float32)
    top, left = (height - inner[1]) // 2, (width - inner[0]) // 2
    framed[top:top + inner[1], left:left + inner[0]] = scaled
    return framed
