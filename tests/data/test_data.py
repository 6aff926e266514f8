"""Image data: MNIST IDX files (MNIST-format files the tests write, and damaged ones), sklearn
digits, image folders, load-by-name, grids. No test reads the real MNIST: ``mnist_dir``
(tests/conftest.py) is a small MNIST-format set written by tests/mnist_idx.py."""

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mnist_idx import idx_bytes, mnist_like_arrays, write_split

import difflab as dl
from difflab.data import mnist


def test_t10k(mnist_dir):
    """The gzipped split: shapes, dtypes, [-1, 1], and the bytes written round-trip."""
    images, labels = mnist.load(mnist_dir, split="t10k")
    want_images, want_labels = mnist_like_arrays()
    assert images.shape == (1200, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (1200,) and labels.dtype == torch.long
    assert images.min() == -1.0 and images.max() == 1.0
    # 0 -> -1 and 255 -> 1 linearly: background is exactly -1, and the raw bytes round-trip
    raw = np.frombuffer(gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    np.testing.assert_array_equal(((images.numpy().ravel() + 1) * 127.5).round().astype(np.uint8), raw)
    np.testing.assert_array_equal(raw.reshape(-1, 28, 28), want_images[:1200])
    assert labels.tolist() == want_labels[:1200].tolist()


def test_raw_split_loads_by_name(mnist_dir):
    """The uncompressed split (train5k), through dl.data.load by name."""
    assert (mnist_dir / "train5k-images-idx3-ubyte").is_file()
    images, labels = dl.data.load("mnist", root=str(mnist_dir), split="train5k")
    want_images, want_labels = mnist_like_arrays()
    assert images.shape == (597, 1, 28, 28)
    assert torch.equal(labels, torch.from_numpy(want_labels[1200:].astype(np.int64)))
    assert torch.bincount(labels, minlength=10).min() > 0  # every class
    torch.testing.assert_close(images, torch.from_numpy(want_images[1200:]).float().unsqueeze(1) / 127.5 - 1)


def test_image_size_pads_or_resizes(tmp_path):
    g = np.random.default_rng(0)
    images, labels = g.integers(0, 256, (4, 28, 28)), np.array([0, 1, 2, 3])
    write_split(tmp_path, images, labels)
    x28, _ = mnist.load(tmp_path, split="toy")
    x32, _ = mnist.load(tmp_path, split="toy", image_size=32)  # pads with background
    assert x32.shape == (4, 1, 32, 32)
    torch.testing.assert_close(x32[:, :, 2:30, 2:30], x28)
    assert (x32[:, :, :2] == -1).all() and (x32[:, :, :, 30:] == -1).all()
    x14, _ = mnist.load(tmp_path, split="toy", image_size=14)  # resizes (antialiased)
    assert x14.shape == (4, 1, 14, 14)
    torch.testing.assert_close(x14.mean((2, 3)), x28.mean((2, 3)), rtol=0, atol=0.02)
    step = np.zeros((1, 28, 28))
    step[:, :, 14:] = 255  # left half black, right half white: stays a clean step away from the edge
    write_split(tmp_path / "step", step, np.array([0]))
    s14, _ = mnist.load(tmp_path / "step", split="toy", image_size=14)
    assert (s14[..., :6] == -1).all() and (s14[..., 8:] == 1).all()
    x56, _ = mnist.load(tmp_path, split="toy", image_size=56, mode="resize")
    assert x56.shape == (4, 1, 56, 56) and x56.min() >= -1 and x56.max() <= 1
    with pytest.raises(ValueError, match="mode"):
        mnist.load(tmp_path, split="toy", image_size=32, mode="crop")
    with pytest.raises(ValueError, match="image_size"):
        mnist.load(tmp_path, split="toy", image_size=0)


def test_raw_and_gzipped_files_read_alike(tmp_path):
    g = np.random.default_rng(1)
    images, labels = g.integers(0, 256, (5, 28, 28)), g.integers(0, 10, 5)
    write_split(tmp_path / "gz", images, labels, gz=True)
    write_split(tmp_path / "raw", images, labels, gz=False)
    xg, yg = mnist.load(tmp_path / "gz", split="toy")
    xr, yr = mnist.load(tmp_path / "raw", split="toy")
    assert torch.equal(xg, xr) and torch.equal(yg, yr) and yr.tolist() == labels.tolist()
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "raw" / "toy-images-idx3-ubyte"), images)


def test_missing_folder_and_files(tmp_path, mnist_dir):
    with pytest.raises(FileNotFoundError) as err:
        mnist.load(tmp_path / "nowhere")
    message = str(err.value)
    for part in ("nowhere", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "download=True"):
        assert part in message
    assert "/work" not in message and "shared" not in message  # no machine's own path
    (tmp_path / "half").mkdir()
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path / "half")
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found.*t10k-images"):
        mnist.load(tmp_path / "half")
    with pytest.raises(FileNotFoundError, match="only the official splits"):
        mnist.load(tmp_path / "half", split="train5k", download=True)


def test_damaged_files_give_clear_errors(tmp_path):
    g = np.random.default_rng(2)
    images, labels = g.integers(0, 256, (6, 28, 28)), g.integers(0, 10, 6)
    good_images, good_labels = idx_bytes(images), idx_bytes(labels)

    def case(name, image_bytes, label_bytes, gz=False):
        root = tmp_path / name
        root.mkdir()
        suffix = ".gz" if gz else ""
        (root / f"toy-images-idx3-ubyte{suffix}").write_bytes(image_bytes)
        (root / f"toy-labels-idx1-ubyte{suffix}").write_bytes(label_bytes)
        return root

    cases = {
        "truncated": (good_images[:-100], good_labels, False, "truncated"),
        "too_long": (good_images + b"\0", good_labels, False, "longer than declared"),
        "bad_magic": (b"\x12\x34" + good_images[2:], good_labels, False, "bad magic number 1234"),
        "empty": (b"", good_labels, False, "empty file"),
        "short_header": (good_images[:9], good_labels, False, "shorter than its 16-byte header"),
        "bad_gzip": (gzip.compress(good_images)[:-30], gzip.compress(good_labels), True, "corrupt or truncated gzip"),
        "not_gzip": (good_images, good_labels, True, "not a gzip file"),
        "count_mismatch": (good_images, idx_bytes(labels[:5]), False, "6 images .* but 5 labels"),
        "swapped": (good_labels, good_images, False, "uint8 images \\[N, H, W\\]"),
        "bad_label": (good_images, idx_bytes(np.array([0, 1, 2, 3, 4, 12])), False, "label 12"),
    }
    for name, (image_bytes, label_bytes, gz, match) in cases.items():
        root = case(name, image_bytes, label_bytes, gz)
        with pytest.raises(ValueError, match=match):
            mnist.load(root, split="toy")


def test_download_from_a_mirror(tmp_path, mnist_dir, monkeypatch):
    """download=True fetches missing files (md5-checked) from a mirror; here a local file:// one
    serving the tests' own t10k files, with their md5 sums in place of the published ones."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, mirror / name)
        monkeypatch.setitem(mnist.MD5, name, hashlib.md5((mnist_dir / name).read_bytes()).hexdigest())
    bad = tmp_path / "bad_mirror"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(b"not mnist")
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not mnist")
    root = tmp_path / "downloads"
    images, labels = mnist.load(root, download=True, mirrors=(bad.as_uri() + "/", mirror.as_uri() + "/"))
    assert images.shape == (1200, 1, 28, 28) and len(labels) == 1200
    assert sorted(p.name for p in root.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(RuntimeError, match="md5"):
        mnist.load(tmp_path / "again", download=True, mirrors=(bad.as_uri() + "/",))


def test_digits():
    images, labels = dl.data.digits.load()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert labels.shape == (1797,) and labels.dtype == torch.long and set(labels.tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    np.testing.assert_allclose(images[5, 0].numpy(), load_digits().images[5] / 8 - 1)
    big, _ = dl.data.load("digits", image_size=16)
    assert big.shape == (1797, 1, 16, 16) and big.min() >= -1 and big.max() <= 1
    torch.testing.assert_close(big.view(1797, 1, 8, 2, 8, 2).mean((3, 5)).mean(), images.mean(), atol=1e-3, rtol=0)


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_image_folder(tmp_path):
    g = np.random.default_rng(3)
    rgb = g.integers(0, 256, (3, 12, 10, 3))  # height 12, width 10
    for i, a in enumerate(rgb):
        write_png(tmp_path / "imgs" / f"{i}.png", a)
    write_png(tmp_path / "imgs" / "sub" / "gray.png", g.integers(0, 256, (12, 10)))  # searched recursively
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    images, labels = dl.data.images.load_folder(tmp_path / "imgs")
    assert labels is None and images.shape == (4, 3, 12, 10) and images.dtype == torch.float32
    np.testing.assert_allclose(images[0].permute(1, 2, 0).numpy(), rgb[0] / 127.5 - 1, atol=1e-6)
    assert images.min() >= -1 and images.max() <= 1
    gray, _ = dl.data.load("folder", path=tmp_path / "imgs", channels=1)
    assert gray.shape == (4, 1, 12, 10)
    # resizing: shorter side to 8, centre crop 8x8; a constant image stays constant
    write_png(tmp_path / "flat" / "a.png", np.full((20, 30, 3), 255))
    write_png(tmp_path / "flat" / "b.png", np.zeros((9, 9, 3)))
    resized, _ = dl.data.images.load_folder(tmp_path / "flat", image_size=8)
    assert resized.shape == (2, 3, 8, 8)
    assert torch.equal(resized[0], torch.ones(3, 8, 8)) and torch.equal(resized[1], -torch.ones(3, 8, 8))
    # all-grayscale folders load with one channel
    write_png(tmp_path / "grays" / "a.png", np.zeros((5, 5)))
    assert dl.data.images.load_folder(tmp_path / "grays")[0].shape == (1, 1, 5, 5)


def test_image_folder_reads_16_bit_images_at_their_depth(tmp_path):
    """A 16-bit PNG was clipped at 255 by Pillow's convert("L"): a ramp over 0..65535 read as
    mean 0.97 (nearly all white). It is read as v / 65535, alone, in colour and resized."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    (tmp_path / "deep").mkdir()
    Image.fromarray(ramp).save(tmp_path / "deep" / "a.png")
    want = torch.from_numpy(ramp / 65535 * 2 - 1).float()
    x, _ = dl.data.images.load_folder(tmp_path / "deep")
    assert x.shape == (1, 1, 8, 8) and abs(float(x.mean())) < 1e-3  # (white: 0.97)
    torch.testing.assert_close(x[0, 0], want, rtol=0, atol=1e-6)
    rgba, _ = dl.data.images.load_folder(tmp_path / "deep", channels=4)
    torch.testing.assert_close(rgba[0, :3], want.expand(3, 8, 8), rtol=0, atol=1e-6)
    assert torch.equal(rgba[0, 3], torch.ones(8, 8))  # opaque
    small, _ = dl.data.images.load_folder(tmp_path / "deep", image_size=4)
    assert small.shape == (1, 1, 4, 4) and abs(float(small.mean())) < 0.05  # still a ramp, not white


def test_image_folder_errors(tmp_path):
    write_png(tmp_path / "mixed" / "a.png", np.zeros((8, 8, 3)))
    write_png(tmp_path / "mixed" / "b.jpg", np.zeros((6, 9, 3)))
    with pytest.raises(ValueError, match=r"a\.png is 8x8 but b\.jpg is 9x6.*image_size"):
        dl.data.images.load_folder(tmp_path / "mixed")
    assert dl.data.images.load_folder(tmp_path / "mixed", image_size=4)[0].shape == (2, 3, 4, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no PNG/JPG/JPEG images.*empty"):
        dl.data.images.load_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dl.data.images.load_folder(tmp_path / "nowhere")
    write_png(tmp_path / "broken" / "a.png", np.zeros((4, 4)))
    (tmp_path / "broken" / "b.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"cannot read .*b\.png"):
        dl.data.images.load_folder(tmp_path / "broken")
    good = (tmp_path / "broken" / "a.png").read_bytes()
    (tmp_path / "broken" / "b.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match=r"cannot read .*b\.png"):
        dl.data.images.load_folder(tmp_path / "broken")
    with pytest.raises(ValueError, match="channels"):
        dl.data.images.load_folder(tmp_path / "mixed", channels=2)


def test_load_by_name_errors():
    with pytest.raises(ValueError, match="digits, folder, mnist"):
        dl.data.load("cifar100")
    with pytest.raises(TypeError, match="root"):
        dl.data.load("digits", root="x")


def test_image_grid(tmp_path):
    images = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0, 2.0, -5.0)])  # 5 tiles, H=2, W=3
    grid = dl.data.to_image_grid(images, nrow=2, padding=1, pad_value=-1.0)
    assert grid.dtype == np.uint8 and grid.shape == (3 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 128 and grid[4, 1, 0] == 255  # rows of 2
    assert grid[4, 5, 0] == 255 and grid[7, 1, 0] == 0  # clamped to [-1, 1]
    assert grid[0, 0, 0] == 0 and grid[7, 5, 0] == 0  # padding and the empty last tile
    path = dl.evaluation.save_image_grid(torch.rand(6, 3, 4, 4) * 2 - 1, tmp_path / "grid.png", nrow=3)
    from PIL import Image

    assert Image.open(path).size == (3 * 6 + 2, 2 * 6 + 2)
    with pytest.raises(ValueError, match="nrow"):
        dl.data.to_image_grid(images, nrow=0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        dl.data.to_image_grid(torch.zeros(2, 4, 4), nrow=2)
