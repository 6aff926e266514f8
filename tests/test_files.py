"""Atomic writes (difflab.files), and the writers that use them: checkpoints, exports, metrics,
sample grids (difflab.data.grids) and plots (difflab.evaluation.plots)."""

import pytest
import torch


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    """The one atomic-write mechanism (checkpoints, exports, metrics, classifiers, downloads)."""
    from difflab.files import atomic_write, atomic_write_text

    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_grids_and_plots_are_written_atomically(tmp_path, monkeypatch):
    """A sample grid (written during training) or a plot cut off mid-write left a truncated file;
    now the old file stays and no temporary one is left."""
    from pathlib import Path

    import matplotlib.figure
    from PIL import Image

    from difflab.data.grids import save_image_grid
    from difflab.evaluation.plots import loss_curve

    grid, plot = tmp_path / "g.png", tmp_path / "loss.png"
    save_image_grid(torch.zeros(1, 1, 4, 4), grid)
    loss_curve([1.0, 0.5, 0.25], plot)
    before = {p: p.read_bytes() for p in (grid, plot)}

    def disk_full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_image_grid(torch.ones(1, 1, 4, 4), grid)
    with pytest.raises(OSError, match="No space"):
        loss_curve([3.0, 2.0], plot)
    assert {p: p.read_bytes() for p in (grid, plot)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "loss.png"]


def test_sha256_file_is_the_digest_of_the_bytes_across_block_boundaries(tmp_path):
    import hashlib

    from difflab.files import sha256_file

    data = bytes(range(256)) * 8193  # just over 2 MiB: the last of three 1 MiB blocks is partial
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
