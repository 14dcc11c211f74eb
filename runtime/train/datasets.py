"""Datasets for training: the shipped handwritten digits, a seeded teacher MLP, and IDX files from a folder."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from partition.spec import MLPSpec


class DatasetKind(Enum):
    """Where training data comes from."""

    DIGITS = "digits"
    SYNTHETIC = "synthetic"
    IDX = "idx"


@dataclass(frozen=True)
class Dataset:
    """Train/test tensors (float64 inputs, int64 class labels) and the number of classes."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        """Input width the first layer must have."""
        return int(self.x_train.shape[1])


def _split(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, classes: int) -> Dataset:
    """Shuffle with ``seed`` and cut off a test set."""
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - int(round(len(x) * test_fraction))
    tr, te = order[:cut], order[cut:]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return Dataset(name, xt[tr], yt[tr], xt[te], yt[te], classes)


def load_digits(seed: int = 0) -> Dataset:
    """The 1,797 shipped 8x8 digits, pixels scaled to [0, 1], 20% held out for testing."""
    with resources.files("runtime.train.data").joinpath("digits.npz").open("rb") as fh:
        arrays = np.load(fh)
        images, labels = arrays["images"], arrays["labels"]
    return _split("digits", images / 16.0, labels, 0.2, seed, 10)


def make_synthetic(spec: MLPSpec, samples: int = 4096, seed: int = 0) -> Dataset:
    """Gaussian inputs labelled by the argmax of a seeded random teacher MLP of the spec's shape."""
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(samples, spec.widths[0], generator=gen, dtype=torch.float64)
    h = x
    for layer in range(spec.num_layers):
        out_f, in_f = spec.layer_shape(layer)
        w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64) / in_f**0.5
        h = h @ w.t()
        if spec.has_activation(layer):
            h = torch.tanh(h)
    y = h.argmax(1)
    return _split("synthetic", x.numpy(), y.numpy(), 0.2, seed, spec.widths[-1])


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic 0x00 0x00 dtype ndim, big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    """The file ``stem`` or ``stem.gz`` in ``folder``."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise ValueError(f"idx:{folder}: missing {stem}[.gz] (expected MNIST/Fashion-MNIST file names)")


def load_idx(folder: str | Path) -> Dataset:
    """MNIST/Fashion-MNIST IDX files (train-images-idx3-ubyte, ... , t10k-labels-idx1-ubyte) from a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"idx:{folder}: no such folder")
    parts = {}
    for key, stem in {
        "xtr": "train-images-idx3-ubyte",
        "ytr": "train-labels-idx1-ubyte",
        "xte": "t10k-images-idx3-ubyte",
        "yte": "t10k-labels-idx1-ubyte",
    }.items():
        parts[key] = _read_idx(_find(folder, stem))
    xtr = parts["xtr"].reshape(len(parts["xtr"]), -1) / 255.0
    xte = parts["xte"].reshape(len(parts["xte"]), -1) / 255.0
    if len(xtr) != len(parts["ytr"]) or len(xte) != len(parts["yte"]):
        raise ValueError(f"idx:{folder}: image and label counts differ")
    classes = int(max(parts["ytr"].max(), parts["yte"].max())) + 1
    as_t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a, dtype=dt))  # noqa: E731
    return Dataset(
        "idx", as_t(xtr, np.float64), as_t(parts["ytr"], np.int64), as_t(xte, np.float64), as_t(parts["yte"], np.int64), classes
    )


def load_dataset(name: str, spec: MLPSpec, seed: int = 0, samples: int = 4096) -> Dataset:
    """``digits``, ``synthetic`` or ``idx:DIR``; checks that the spec's widths fit the data."""
    if name == DatasetKind.DIGITS.value:
        data = load_digits(seed)
    elif name == DatasetKind.SYNTHETIC.value:
        data = make_synthetic(spec, samples, seed)
    elif name.startswith(DatasetKind.IDX.value + ":"):
        data = load_idx(name.split(":", 1)[1])
    else:
        raise ValueError(f"dataset: unknown {name!r}; choose digits, synthetic or idx:DIR")
    if spec.widths[0] != data.num_features:
        raise ValueError(f"widths: the first width is {spec.widths[0]} but {data.name} has {data.num_features} features")
    if spec.widths[-1] < data.num_classes:
        raise ValueError(f"widths: the last width is {spec.widths[-1]} but {data.name} has {data.num_classes} classes")
    return data
