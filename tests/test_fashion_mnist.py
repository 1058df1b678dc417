"""Fashion-MNIST IDX reader and dataset, on tiny IDX files written here (CI does not need the Debian package)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from distill.data import load_data
from distill.data.fashion_mnist import DEFAULT_DIR, FILES, read_idx
from distill.errors import DistillError


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def fake_dir(tmp_path: Path, n_train: int = 40, n_test: int = 12) -> Path:
    rng = np.random.default_rng(0)
    write_idx(tmp_path / FILES["train_images"], rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(tmp_path / FILES["train_labels"], np.arange(n_train) % 10)
    write_idx(tmp_path / FILES["test_images"], rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(tmp_path / FILES["test_labels"], np.arange(n_test) % 10)
    return tmp_path


def test_read_idx_round_trip(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    write_idx(tmp_path / "x.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), a)


def test_corrupt_or_truncated_idx_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DistillError, match="bad magic"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc"))
    with pytest.raises(DistillError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_dataset_from_a_directory(tmp_path: Path) -> None:
    bundle = load_data("fashion-mnist", kwargs={"directory": str(fake_dir(tmp_path)), "test_size": 10})
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert len(bundle.train) + len(bundle.val) == 40 and len(bundle.test) == 10
    item = bundle.train[0]
    assert item["inputs"].dtype.is_floating_point and set(item) == {"inputs", "labels", "index"}


def test_missing_files_name_the_apt_command(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match="apt-get install -y dataset-fashion-mnist"):
        load_data("fashion-mnist", kwargs={"directory": str(tmp_path)})


@pytest.mark.skipif(not (Path(DEFAULT_DIR) / FILES["test_labels"]).is_file(), reason="dataset-fashion-mnist not installed")
def test_the_installed_package_loads() -> None:
    bundle = load_data("fashion-mnist", kwargs={"train_size": 1000, "test_size": 500})
    assert len(bundle.train) == 1000 and len(bundle.val) == 5000 and len(bundle.test) == 500
    assert bundle.class_names[0] == "T-shirt/top"
