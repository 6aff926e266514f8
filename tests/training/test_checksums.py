"""Checkpoint checksums and safe loading (difflab.training.checkpoint): a SHA-256 of every file
recorded at save and verified at load, a finite check of loaded weights (for checkpoints from
before checksums, and exported files), and a damaged ``checkpoints/latest`` pointer.

Runs: the tiny MLP of tiny_config.py (a few steps each). The same failures through the
``difflab`` command: tests/test_bad_input_training.py.
"""

import hashlib
import struct

import pytest
import torch
from tiny_config import tiny

import difflab as dl
from difflab.training import Trainer, checkpoint, read_checkpoint
from difflab.training.checkpoint import MANIFEST, latest_checkpoint, verify_checkpoint

FILES = ["config.yaml", "ema.safetensors", "model.safetensors", "optimizer.pt", "rng.pt", "state.json"]


@pytest.fixture
def run(tmp_path):
    """A run with two complete checkpoints, step 2 and step 4."""
    Trainer(tiny(steps=4, ckpt_every=2), tmp_path / "run", progress=False).train()
    return tmp_path / "run"


def spray(file, n=4000, byte=b"\xff"):
    """Overwrite n bytes inside a safetensors file's tensor data: the file still parses, and
    0xFFFFFFFF is a float32 NaN."""
    data = bytearray(file.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0] + 64
    assert start + n <= len(data)
    data[start:start + n] = byte * n
    file.write_bytes(bytes(data))


def test_every_file_has_its_sha256_in_the_manifest(run):
    ck = latest_checkpoint(run)
    lines = (ck / MANIFEST).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == FILES  # sha256sum's format, sorted
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.sha256((ck / name).read_bytes()).hexdigest() == digest
    assert verify_checkpoint(run) == ck


def test_corrupted_weights_that_still_parse_are_refused_naming_the_file_and_the_other_checkpoint(run):
    ck = latest_checkpoint(run)
    spray(ck / "ema.safetensors")
    for load in (dl.load, read_checkpoint, lambda r: dl.training.export_model(r, r.parent / "e.safetensors")):
        with pytest.raises(ValueError) as err:
            load(run)
        msg = str(err.value)
        assert f"{str(ck / 'ema.safetensors')!r} is damaged" in msg and "\n" not in msg
        assert "step_00000002" in msg  # the other complete checkpoint
    with pytest.raises(ValueError, match="is damaged"):
        Trainer(tiny(steps=6, ckpt_every=2), run, resume=True, progress=False)
    assert dl.load(run / "checkpoints" / "step_00000002").step == 2  # the one named still loads


def test_a_changed_file_that_parses_is_caught_by_its_checksum(run):
    """A re-saved rng.pt (one bit of a generator state changed) parses and fits: only its
    checksum tells. Resuming from it would not be exact."""
    ck = latest_checkpoint(run)
    rng = torch.load(ck / "rng.pt", weights_only=True)
    rng[0]["cpu"][100] ^= 1
    torch.save(rng, ck / "rng.pt")
    with pytest.raises(ValueError, match=r"rng.pt' is damaged \(its SHA-256 differs"):
        Trainer(tiny(steps=6, ckpt_every=2), run, resume=True, progress=False)
    dl.load(run)  # sampling does not read rng.pt


def test_checkpoints_without_checksums_still_load_and_non_finite_weights_are_refused(run):
    ck = latest_checkpoint(run)
    (ck / MANIFEST).unlink()  # as written before difflab recorded checksums
    assert dl.load(run).step == 4
    Trainer(tiny(steps=6, ckpt_every=2), run, resume=True, progress=False).train()
    assert (latest_checkpoint(run) / MANIFEST).is_file()  # the new one has checksums
    spray(ck / "ema.safetensors")
    old = ck
    with pytest.raises(ValueError, match="ema.safetensors' is damaged .*NaN or inf"):
        dl.load(old)


def test_an_edited_learning_rate_in_a_checkpoint_is_refused_not_silently_ignored(run):
    """The optimizer state brings its own learning rate: an lr edited in the checkpoint's
    config.yaml was recorded by the resumed run but never applied."""
    ck = latest_checkpoint(run)
    for manifest in (True, False):
        if not manifest:
            (ck / MANIFEST).unlink()
        text = (ck / "config.yaml").read_text()
        (ck / "config.yaml").write_text(text.replace("lr: 0.001", "lr: 0.0005"))
        with pytest.raises(ValueError, match=r"config.yaml was edited .*optim.lr = 0.0005 in the config, 0.001 in "):
            Trainer(dl.training.load_config(ck / "config.yaml"), run, resume=True, progress=False)
        (ck / "config.yaml").write_text(text)


def test_a_damaged_latest_pointer_falls_back_to_the_newest_complete_checkpoint(run, capsys):
    pointer = run / "checkpoints" / "latest"
    pointer.write_bytes(b"\xff\xfe\x00\x9c junk")
    checkpoint._noted.clear()
    assert latest_checkpoint(run).name == "step_00000004"
    assert dl.load(run).step == 4
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and f"{str(pointer)!r} is damaged" in err and "step_00000004" in err
    pointer.write_text("../../elsewhere\n")  # readable, but no checkpoint name
    assert latest_checkpoint(run).name == "step_00000004"
    Trainer(tiny(steps=6, ckpt_every=2), run, resume=True, progress=False).train()
    assert pointer.read_text() == "step_00000006\n"  # the next checkpoint rewrote it


def test_export_refuses_weights_beyond_fp16_and_exported_files_with_nan(run, tmp_path):
    ck = latest_checkpoint(run)
    weights = checkpoint.load_file(str(ck / "ema.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] * 0 + 1e6
    checkpoint.save_file(weights, str(ck / "ema.safetensors"))
    (ck / MANIFEST).unlink()
    with pytest.raises(ValueError, match="cannot export as fp16: .* NaN or inf .*export as bf16 or fp32"):
        dl.training.export_model(run, tmp_path / "h.safetensors", dtype="fp16")
    out = dl.training.export_model(run, tmp_path / "b.safetensors", dtype="bf16")
    spray(out, n=400)
    with pytest.raises(ValueError, match="exported model .*b.safetensors' is damaged .*NaN or inf"):
        dl.load(out)
