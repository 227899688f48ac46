"""Byte-level text for causal language modelling: predict every next byte of a window (vocabulary 256,
no tokenizer to download).

The corpus is `data.path` (a text file, or a folder whose `.txt` files are joined in name order), or by
default the English help texts that ship with CPython (`pydoc_data.topics`, about 465 KB), present on
every machine. It is cut into three contiguous blocks, train, validation and test, in that order, so no
window of one split overlaps another. Training windows of `data.context` bytes start at offsets drawn
by the seed (as many as the block has windows); validation and test windows tile their block, so each
of their bytes is predicted exactly once and bits per byte are those of the whole block. Bytes are kept
as uint8 (a corpus of n bytes takes about 2n in memory); models read them as token ids.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from moelab.data.registry import LANGUAGE_MODELING
from moelab.data.settings import DataSettings
from moelab.data.task_data import TaskData

VOCABULARY = 256
SNIFF_BYTES = 1 << 16  # what is read of each file to tell text from binary before launch


def corpus_files(settings: DataSettings) -> list[Path]:
    path = Path(settings.path)
    return sorted(path.glob("*.txt")) if path.is_dir() else [path]


def check(name: str, settings: DataSettings) -> list[str]:
    """Missing, empty, binary or too short corpora, named with the fix; reads at most the start of each file."""
    if settings.path is None:
        return _check_size(len(default_corpus()), settings, "CPython's help texts")
    path = Path(settings.path)
    if not path.exists():
        return [f"data.path: {str(path)!r} does not exist; give a text file or a folder of .txt files "
                f"(or remove data.path to use CPython's help texts)"]
    files = corpus_files(settings)
    if not files:
        return [f"data.path: the folder {str(path)!r} holds no .txt file; put the corpus in .txt files"]
    size = 0
    for file in files:
        try:
            with open(file, "rb") as handle:
                start = handle.read(SNIFF_BYTES)
            size += file.stat().st_size
        except OSError as error:
            return [f"data.path: cannot read {str(file)!r} ({error.strerror or error}); check its permissions"]
        if b"\0" in start:
            return [f"data.path: {str(file)!r} looks binary (it holds NUL bytes), not text; give a text file"]
        try:
            start.decode("utf-8")
        except UnicodeDecodeError as error:
            if error.start < len(start) - 4:  # a character cut by the sniffed length is fine
                return [f"data.path: {str(file)!r} is not UTF-8 text (byte {error.start}); convert it to UTF-8"]
    if size == 0:
        return [f"data.path: {str(path)!r} is empty; give a non-empty text corpus"]
    return _check_size(size, settings, repr(str(path)))


def _check_size(size: int, settings: DataSettings, what: str) -> list[str]:
    blocks = split_sizes(size, settings)
    smallest = min(blocks)
    if smallest < settings.context + 1:
        split = ("train", "validation", "test")[blocks.index(smallest)]
        return [f"data.context: {what} has {size:,} bytes, so its {split} block has {smallest:,}, fewer than one "
                f"window of context {settings.context} + 1 bytes; lower data.context or use a longer corpus"]
    return []


def split_sizes(size: int, settings: DataSettings) -> tuple[int, int, int]:
    test = int(size * settings.test_fraction)
    val = int(size * settings.val_fraction)
    return size - val - test, val, test


def default_corpus() -> bytes:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "".join(topics[key] for key in sorted(topics)).encode("utf-8")


def read_corpus(settings: DataSettings) -> bytes:
    if settings.path is None:
        return default_corpus()
    return b"".join(file.read_bytes() for file in corpus_files(settings))


def corpus_digest(settings: DataSettings) -> str:
    """sha256 of the corpus: the default one changes with the Python version."""
    return hashlib.sha256(read_corpus(settings)).hexdigest()


def tile(block: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive windows covering the block once: inputs [N, context] and next bytes [N, context]."""
    count = (len(block) - 1) // context
    x = block[: count * context].view(count, context)
    y = block[1 : count * context + 1].view(count, context)
    return x, y


def drawn_windows(block: torch.Tensor, context: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(block) - context, (count,), generator=torch.Generator().manual_seed(seed))
    offsets = starts.unsqueeze(1) + torch.arange(context + 1)
    windows = block[offsets]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def load(name: str, settings: DataSettings, seed: int) -> TaskData:
    corpus = torch.frombuffer(bytearray(read_corpus(settings)), dtype=torch.uint8)
    train_size, val_size, _ = split_sizes(len(corpus), settings)
    train, val, test = corpus[:train_size], corpus[train_size : train_size + val_size], corpus[train_size + val_size :]
    count = (len(train) - 1) // settings.context
    if settings.max_train_samples is not None:
        count = min(count, settings.max_train_samples)
    x_train, y_train = drawn_windows(train, settings.context, count, seed)
    (x_val, y_val), (x_test, y_test) = tile(val, settings.context), tile(test, settings.context)
    return TaskData(LANGUAGE_MODELING, x_train, y_train, x_val, y_val, x_test, y_test, d_out=VOCABULARY)
