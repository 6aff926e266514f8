"""A small MNIST-format data set written by the tests, so that no test needs the real MNIST
(``../shared/data/mnist`` beside a checkout exists on the project's machines only).

IDX files are written here independently of the reader (``difflab.data.mnist``): the magic
``0x00 0x00 0x08 <ndim>``, big-endian uint32 sizes, then the uint8 values in C order.

``write_mnist_like(root)`` makes MNIST's layout from scikit-learn's bundled 8x8 digits (1,797,
no download): each digit upsampled to 20x20 and centred in 28x28, as MNIST's digits are; the
first 1,200 as ``t10k`` (gzipped, like the published files), the other 597 as ``train5k``
(raw, uncompressed: the reader takes both). ``tests/conftest.py`` writes it once a session
(the ``mnist_dir`` fixture).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

SPLITS = {"t10k": slice(0, 1200), "train5k": slice(1200, None)}
GZIPPED = {"t10k": True, "train5k": False}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX file of a uint8 array: magic 0x0000 08 ndim, big-endian uint32 dims, the bytes."""
    array = np.asarray(array)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array).astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """``array`` as the IDX file ``path`` (gzipped when ``gz``; the name is taken as given)."""
    data = idx_bytes(array)
    Path(path).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return Path(path)


def write_split(root: Path, images: np.ndarray, labels: np.ndarray, split: str = "toy", gz: bool = True) -> None:
    """``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]`` in ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels, gz)


def mnist_like_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as MNIST-style uint8 images [N, 28, 28] (background 0) and labels [N]."""
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = torch.nn.functional.pad(x, (4, 4, 4, 4))
    images = (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return images, bunch.target.astype(np.uint8)


def write_mnist_like(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``t10k`` (gzipped) and ``train5k`` (raw) into ``root``; returns {split: (images, labels)}."""
    images, labels = mnist_like_arrays()
    out = {}
    for split, idx in SPLITS.items():
        write_split(root, images[idx], labels[idx], split, gz=GZIPPED[split])
        out[split] = (images[idx], labels[idx])
    return out
