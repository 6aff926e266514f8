"""MNIST from its IDX files (LeCun et al. 1998), read with numpy, scaled to [-1, 1].

The IDX format: a big-endian header ``0x00 0x00 <type code> <ndim>`` then ``ndim`` uint32
sizes, then the values in C order. MNIST's images are type 0x08 (ubyte) with 3 dims
[N, 28, 28] (magic 0x00000803); its labels are ubyte with 1 dim [N] (magic 0x00000801).

    images, labels = dl.data.mnist.load("../shared/data/mnist", split="t10k")

A folder holds ``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]``,
gzipped or raw: the official files (``train``, ``t10k``), or any split named the same way
(``train5k`` in the project's shared data).
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.request
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write_bytes
from ..validation import is_int
from ._resize import resize_square

__all__ = ["load", "read_idx", "MIRRORS", "MD5"]

# Mirrors of the official files (yann.lecun.com often refuses downloads now).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# md5 of the published gzipped files.
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        if path.suffix == ".gz":
            raise ValueError(f"{path} is named .gz but is not a gzip file (it starts with {data[:4].hex()})")
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is a corrupt or truncated gzip file ({err}); download it again") from None


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """The array stored in an IDX file (gzipped or raw), with its header checked against its length."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path} is not an IDX file: bad magic number {data[:4].hex() or '(empty file)'} "
            "(expected 0000 then a type code such as 08 and the number of dims)"
        )
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path} has {len(data)} bytes but its header (dims {list(dims)}) says {expected}: "
            f"the file is {'truncated' if len(data) < expected else 'longer than declared'}; download it again"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, name: str) -> Optional[Path]:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(root: Path, names: list[str], mirrors: tuple[str, ...]) -> None:
    """Fetch the gzipped files into root, each written to a temp file, checked, then renamed."""
    names = [n for n in names if _find(root, n) is None]
    unknown = [n for n in names if f"{n}.gz" not in MD5]
    if unknown:
        raise FileNotFoundError(
            f"{', '.join(unknown)} not found in {str(root)!r}, and only the official splits "
            "'train' and 't10k' can be downloaded"
        )
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        gz = f"{name}.gz"
        errors = []
        for mirror in mirrors:
            try:
                with urllib.request.urlopen(mirror + gz, timeout=60) as response:
                    data = response.read()
            except OSError as err:
                errors.append(f"{mirror}{gz}: {err}")
                continue
            if hashlib.md5(data).hexdigest() != MD5[gz]:
                errors.append(f"{mirror}{gz}: md5 {hashlib.md5(data).hexdigest()} != {MD5[gz]}")
                continue
            atomic_write_bytes(root / gz, data)
            break
        else:
            raise RuntimeError(f"could not download {gz} into {root}:\n  " + "\n  ".join(errors))


def load(
    root: Union[str, Path],
    split: str = "t10k",
    image_size: Optional[int] = None,
    download: bool = False,
    mode: str = "auto",
    mirrors: tuple[str, ...] = MIRRORS,
) -> tuple[Tensor, Tensor]:
    """MNIST's ``split`` from the folder ``root``: images float32 [N, 1, 28, 28] in [-1, 1], labels long [N].

    ``image_size`` changes the resolution: ``mode="pad"`` pads with background (-1) around the
    28x28 digit (the 32x32 convention of LeNet-5), ``"resize"`` resamples (bilinear,
    antialiased when shrinking); ``"auto"`` pads for 32 and resizes otherwise.
    ``download=True`` fetches missing ``train`` / ``t10k`` files from ``mirrors`` (md5-checked).
    """
    image_size = _check_size(image_size, mode)
    root = Path(root).expanduser()
    names = [f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"]
    if download:
        _download(root, names, tuple(mirrors))
    if not root.is_dir():
        raise FileNotFoundError(
            f"MNIST folder {str(root)!r} does not exist. It should hold {names[0]}[.gz] and "
            f"{names[1]}[.gz] (the official MNIST files' names, gzipped or not); pass download=True "
            "to fetch the official train / t10k files into it"
        )
    paths = [_find(root, n) for n in names]
    missing = [n for n, p in zip(names, paths) if p is None]
    if missing:
        present = sorted(p.name for p in root.iterdir() if "idx" in p.name)
        raise FileNotFoundError(
            f"MNIST split {split!r}: {' and '.join(m + '[.gz]' for m in missing)} not found in {str(root)!r} "
            f"(IDX files there: {', '.join(present) or 'none'}); pass download=True to fetch train / t10k"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{paths[0]} must hold uint8 images [N, H, W], got {images.dtype} of shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{paths[1]} must hold uint8 labels [N], got {labels.dtype} of shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(
            f"MNIST split {split!r}: {len(images)} images in {paths[0].name} but {len(labels)} labels in "
            f"{paths[1].name}; the two files must come from the same split"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{paths[1]} holds label {int(labels.max())}; MNIST labels are 0..9")
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1).div_(127.5).sub_(1.0)
    y = torch.from_numpy(labels.astype(np.int64))
    if image_size is not None and image_size != x.shape[-1]:
        x = _change_size(x, image_size, mode)
    return x, y


def _check_size(size: Optional[int], mode: str) -> Optional[int]:
    """``size`` as an int (numpy integers accepted) or None, once ``mode`` is checked too."""
    if size is not None and (not is_int(size) or size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {size!r}")
    if mode not in ("auto", "pad", "resize"):
        raise ValueError(f"mode must be 'auto', 'pad' or 'resize', got {mode!r}")
    return None if size is None else int(size)


def _change_size(x: Tensor, size: int, mode: str) -> Tensor:
    H = x.shape[-1]
    if mode == "auto":
        mode = "pad" if size == 32 and H == 28 else "resize"
    if mode == "resize":
        return resize_square(x, size)
    if size < H or (size - H) % 2:
        raise ValueError(
            f"mode='pad' grows {H}x{H} by the same margin on each side: image_size must be {H} + 2k, got {size}"
        )
    m = (size - H) // 2
    return torch.nn.functional.pad(x, (m, m, m, m), value=-1.0)
