"""Datasets through their real loaders: digits from scikit-learn, torchvision formats from tiny files."""

from __future__ import annotations

import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision

from moelab.data import DataSettings, dataset_dimensions, dataset_keys, get_dataset_spec, load_dataset

COMMON = {"val_fraction": 0.15, "test_fraction": 0.15, "max_train_samples": None, "root": "data"}


def settings(**values) -> DataSettings:
    return DataSettings(**{**COMMON, **values})


def test_digits_split_is_stratified_seeded_and_standardised_on_train_only():
    data = load_dataset(settings(name="digits"), seed=0)
    assert data.sizes() == {"train": 1257, "val": 270, "test": 270}
    assert data.d_in == 64 and data.d_out == 10
    assert torch.allclose(data.x_train.mean(0), torch.zeros(64), atol=1e-5)
    assert data.x_val.mean().abs() > 1e-4  # val/test are scaled with train statistics, not their own
    counts = torch.bincount(data.y_test, minlength=10)
    assert counts.min() >= 26 and counts.max() <= 28  # about 27 of each class
    again = load_dataset(settings(name="digits"), seed=0)
    other = load_dataset(settings(name="digits"), seed=1)
    assert torch.equal(data.x_test, again.x_test) and not torch.equal(data.x_test, other.x_test)


def test_max_train_samples_subsamples_the_training_set():
    data = load_dataset(settings(name="digits", max_train_samples=100), seed=0)
    assert len(data.x_train) == 100 and len(data.x_test) == 270


def write_idx(path, array: np.ndarray) -> None:
    """IDX format as MNIST ships it: magic (0, 0, type 0x08 = ubyte, ndim), big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root, folder: str, n_train=120, n_test=40) -> None:
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, size=(n, 28, 28))
        images[:, labels, 5] = 255  # a class-dependent stroke
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats_load_through_torchvision(tmp_path, name, folder):
    write_mnist_like(tmp_path, folder)
    cfg = settings(name=name, root=str(tmp_path))
    assert get_dataset_spec(name).check(cfg) == []
    data = load_dataset(cfg, seed=0)
    assert data.sizes() == {"train": 102, "val": 18, "test": 40}
    assert data.d_in == 784 and sorted(data.y_test.unique().tolist()) == list(range(10))
    assert dataset_dimensions(dataset_keys({"name": name})) == (data.d_in, data.d_out)


def test_cifar10_loads_through_torchvision_with_its_integrity_check(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def dump(filename: str, entry: dict) -> list[str]:
        (folder / filename).write_bytes(pickle.dumps(entry))
        return [filename, hashlib.md5((folder / filename).read_bytes()).hexdigest()]

    batches = [dump(f"data_batch_{i}", {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                                        "labels": [j % 10 for j in range(20)]}) for i in range(1, 6)]
    test = [dump("test_batch", {"data": rng.integers(0, 256, (30, 3072), dtype=np.uint8), "labels": [j % 10 for j in range(30)]})]
    meta = dump("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    # the files are ours, so torchvision must check them against our checksums, not the real ones
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", batches)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", test)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta", {"filename": meta[0], "key": "label_names", "md5": meta[1]})
    cfg = settings(name="cifar10", root=str(tmp_path))
    assert get_dataset_spec("cifar10").check(cfg) == []
    data = load_dataset(cfg, seed=0)
    assert data.sizes() == {"train": 85, "val": 15, "test": 30} and data.d_in == 3072
    assert dataset_dimensions(dataset_keys({"name": "cifar10"})) == (data.d_in, data.d_out)
    (folder / "data_batch_3").write_bytes(b"corrupted")
    assert "see data/README.md" in get_dataset_spec("cifar10").check(cfg)[0]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_files_name_the_folder_and_data_readme(tmp_path, name):
    problems = get_dataset_spec(name).check(settings(name=name, root=str(tmp_path)))
    assert len(problems) == 1 and str(tmp_path) in problems[0] and "data/README.md" in problems[0]


def test_image_fit_uses_matplotlibs_sample_image_by_default():
    cfg = settings(name="image_fit", image=None, resolution=32, fourier_features=4)
    assert get_dataset_spec("image_fit").check(cfg) == []
    data = load_dataset(cfg, seed=0)
    assert sum(data.sizes().values()) == 32 * 32 and data.d_in == 2 + 4 * 4 and data.d_out == 3
    assert data.render_inputs.shape == (1024, 18) and data.render_shape == (32, 32, 3)
    assert 0 <= data.y_train.min() and data.y_train.max() <= 1


def test_image_fit_reports_an_unreadable_image(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    problems = get_dataset_spec("image_fit").check(settings(name="image_fit", image=str(tmp_path / "x.png")))
    assert "cannot read image" in problems[0] and "x.png" in problems[0]


@pytest.mark.parametrize("data", [{"name": "digits"}, {"name": "image_fit", "resolution": 8, "fourier_features": 3}])
def test_dataset_dimensions_without_loading_equal_the_loaded_data(data):
    """mnist, fashion_mnist and cifar10 are checked where their tiny files are loaded above."""
    loaded = load_dataset(DataSettings(**data), seed=0)
    assert dataset_dimensions(dataset_keys(data)) == (loaded.d_in, loaded.d_out)
