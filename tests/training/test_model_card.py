"""The model card (difflab.training.model_card) that export_model writes beside the weights: the
numbers read back from the run, the eval metrics of this checkpoint only, the weights' SHA-256,
never a user's file written over, written atomically. Runs: the tiny MLP of tiny_config.py."""

import csv
import hashlib
import json
import os
import re

import pytest
from tiny_config import tiny

import difflab as dl
from difflab.files import atomic_write_text
from difflab.training import Trainer, TrainConfig, checkpoint
from difflab.training.autoencoder import train_autoencoder
from difflab.training.model_card import card_path, is_difflab_card, model_card


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """8 steps, a log row every 2 steps, checkpoints at 4 and 8."""
    folder = tmp_path_factory.mktemp("card") / "run"
    Trainer(tiny(steps=8, log_every=2, ckpt_every=4), folder, progress=False).train()
    return folder


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    """Each test in its own working folder: eval's default eval/<name> is looked up there."""
    monkeypatch.chdir(tmp_path)


def _field(card: str, name: str) -> str:
    """The value of row ``name`` of a card's two-column tables."""
    m = re.search(rf"^\| {re.escape(name)} \| (.*) \|$", card, re.MULTILINE)
    assert m is not None, f"no row {name!r} in the card"
    return m.group(1)


def _log(run):
    with open(run / "log.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def _sha256(file) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _metrics(file, ckpt, sw=0.123456, seconds=0.5):
    """A metrics.json as `difflab eval` writes one for a 2D model (tests/cli/test_cli_export.py
    runs the real command)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({
        "ckpt": str(ckpt.resolve()), "dataset": "toy2d", "n": 100, "seed": 0, "num_classes": 2,
        "reference": "fresh draws of swiss_roll",
        "floor": {"sliced_wasserstein": 0.05, "mmd2": 0.001, "precision": 0.9, "recall": 0.9,
                  "modes_covered": 2, "num_modes": 2},
        "rows": [{"sampler": "ddim", "steps": 5, "guidance": 1.0, "sweep": "base", "seconds": seconds,
                  "model_calls": 5, "sliced_wasserstein": sw, "mmd2": 0.01, "precision": 0.5, "recall": 0.75,
                  "modes_covered": 1, "num_modes": 2}]}))
    return file


def test_the_card_holds_the_runs_numbers_read_back_from_it(run, tmp_path):
    """Steps, time, the last logged loss (the mean of its window), parameters, dtype, EMA or raw,
    the SHA-256 of the file: each read back from the run and the file, for the last checkpoint
    and an earlier one; no eval section without eval metrics."""
    out = checkpoint.export_model(run, tmp_path / "m.safetensors", dtype="fp16")
    card = card_path(out).read_text()
    assert card_path(out) == tmp_path / "m.md" and is_difflab_card(card_path(out))
    state = json.loads((run / "checkpoints" / "step_00000008" / "state.json").read_text())
    assert _field(card, "steps") == "8 of the 8 configured"
    assert _field(card, "wall-clock time").startswith(f"{state['elapsed_s']:.1f} s")
    log = dict(_log(run))
    assert _field(card, "final loss") == f"{log[8]:.4g} (the mean over steps 7–8, log.csv)"
    loaded = dl.load(out)
    assert _field(card, "parameters") == f"{sum(p.numel() for p in loaded.ema_model.parameters()):,}"
    assert "EMA (decay 0.9) weights, stored as fp16" in _field(card, "exported")
    assert _field(card, "classes").startswith("2 (class-conditional")
    assert f"{_sha256(out)}  m.safetensors" in card.splitlines()
    assert "## Evaluation" not in card and "## Provenance" not in card

    earlier = checkpoint.export_model(run / "checkpoints" / "step_00000004", tmp_path / "e.safetensors", ema=False)
    card = card_path(earlier).read_text()
    assert _field(card, "steps") == "4 of the 8 configured"
    assert _field(card, "final loss") == f"{log[4]:.4g} (the mean over steps 3–4, log.csv)"
    assert "step 4 (`step_00000004`), raw (not the EMA) weights, stored as fp32" in _field(card, "exported")
    assert f"{_sha256(earlier)}  e.safetensors" in card.splitlines()
    assert 'dl.load("e.safetensors")' in card and "difflab sample --ckpt e.safetensors --label all" in card


def test_eval_metrics_appear_for_the_checkpoint_they_measured_only(run, tmp_path):
    """metrics.json of this checkpoint (found in eval's default folder or named): its numbers and
    reference; of the run folder when this was its newest checkpoint before the sampling began:
    shown; of another checkpoint, or a run folder measured before this checkpoint was saved: not
    shown (found) or refused (named); of another run: ignored (found) or refused (named)."""
    ck8 = run / "checkpoints" / "step_00000008"
    _metrics(tmp_path / "eval" / "step_00000008" / "metrics.json", ck8, sw=0.123456)
    checkpoint.export_model(ck8, tmp_path / "a.safetensors")
    card = (tmp_path / "a.md").read_text()
    assert "| ddim | 5 | 1 | 0.1235 | 0.01 | 0.5 | 0.75 | 1 of 2 |" in card
    assert "against fresh draws of swiss_roll" in card and "real data: the floor" in card

    # the run folder measured after step 8 was saved (and the sampling seconds before that): step 8's
    by_run = _metrics(tmp_path / "eval" / "run" / "metrics.json", run, sw=0.5, seconds=2.0)
    saved = (ck8 / "state.json").stat().st_mtime
    os.utime(by_run, (saved + 10, saved + 10))
    checkpoint.export_model(run, tmp_path / "b.safetensors", metrics=by_run)
    assert "| ddim | 5 | 1 | 0.5 |" in (tmp_path / "b.md").read_text()
    os.utime(by_run, (saved + 1, saved + 1))  # eval began sampling (2 s) before step 8 was saved
    with pytest.raises(ValueError, match="not certainly this one"):
        checkpoint.export_model(run, tmp_path / "c.safetensors", metrics=by_run)
    assert not (tmp_path / "c.safetensors").exists() and not (tmp_path / "c.md").exists()
    # step 4 is not the run's newest: the run folder's metrics are not its, nor are step 8's
    ck4 = run / "checkpoints" / "step_00000004"
    (tmp_path / "eval" / "step_00000008").rename(tmp_path / "eval" / "step_00000004")  # found by name, of 8
    checkpoint.export_model(ck4, tmp_path / "d.safetensors")
    card = (tmp_path / "d.md").read_text()
    assert "measured another checkpoint of the run, step_00000008: not shown" in card and "| ddim |" not in card
    with pytest.raises(ValueError, match="measured another checkpoint of the run, step_00000008"):
        checkpoint.export_model(ck4, tmp_path / "x.safetensors", metrics=tmp_path / "eval" / "step_00000004")
    # another run's metrics: ignored when found, refused when named
    (tmp_path / "eval" / "run" / "metrics.json").unlink()
    other = _metrics(tmp_path / "eval" / "step_00000004" / "metrics.json", tmp_path / "other_run")
    checkpoint.export_model(ck4, tmp_path / "f.safetensors")
    assert "## Evaluation" not in (tmp_path / "f.md").read_text()
    with pytest.raises(ValueError, match="not this run's checkpoint"):
        checkpoint.export_model(ck4, tmp_path / "x.safetensors", metrics=other)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not readable JSON"):
        checkpoint.export_model(ck4, tmp_path / "x.safetensors", metrics=tmp_path / "junk.json")
    with pytest.raises(ValueError, match="card=False .* writes none"):
        checkpoint.export_model(ck4, tmp_path / "x.safetensors", card=False, metrics=other)
    assert not list(tmp_path.glob("x.*"))


def test_no_user_file_is_written_over(run, tmp_path):
    """A file of the card's name that difflab did not write (or that was edited since, or is a
    link) refuses the export before anything is written, --force or not; card=False leaves it
    alone. The card difflab wrote is replaced, and removed with the weights it describes."""
    out, card = tmp_path / "m.safetensors", tmp_path / "m.md"
    card.write_text("my notes\n")
    for force in (False, True):
        with pytest.raises(FileExistsError, match="not a model card written by difflab"):
            checkpoint.export_model(run, out, force=force)
        assert not out.exists() and card.read_text() == "my notes\n"
    checkpoint.export_model(run, out, card=False)
    assert out.exists() and card.read_text() == "my notes\n"
    card.unlink()
    checkpoint.export_model(run, out, force=True)
    assert is_difflab_card(card)
    edited = card.read_text().replace("## Use", "## How to use")
    card.write_text(edited)
    assert not is_difflab_card(card)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="or was edited since"):
        checkpoint.export_model(run, out, force=True)
    assert card.read_text() == edited and out.read_bytes() == before
    card.unlink()
    (tmp_path / "target.md").write_text("a link's target\n")
    card.symlink_to(tmp_path / "target.md")
    with pytest.raises(FileExistsError):
        checkpoint.export_model(run, out, force=True)
    assert card.is_symlink() and (tmp_path / "target.md").read_text() == "a link's target\n"
    card.unlink()
    # difflab's own card: replaced with the weights (its SHA-256 the new file's) ...
    checkpoint.export_model(run, out, force=True)
    checkpoint.export_model(run, out, force=True, dtype="bf16")
    assert f"{_sha256(out)}  m.safetensors" in card.read_text().splitlines()
    # ... and removed with them when no new card is written: it would describe other weights
    checkpoint.export_model(run, out, force=True, card=False)
    assert not card.exists()


def test_the_card_is_written_atomically(run, tmp_path, monkeypatch):
    """A failure while writing the card leaves no part of one (nor a temporary file), and never
    the old card beside the new weights; a failure before the weights are in place (the card
    cannot be rendered) leaves the old weights and their card untouched."""
    out, card = tmp_path / "m.safetensors", tmp_path / "m.md"
    checkpoint.export_model(run, out)
    weights, text = out.read_bytes(), card.read_text()

    def disk_full(path, data):
        with open(path, "w") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(card), "write_text", lambda self, data, *a, **k: disk_full(self, data))
    with pytest.raises(OSError, match="No space"):
        checkpoint.export_model(run, out, force=True, dtype="fp16")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no half card, no old one
    assert dl.load(out).step == 8 and out.read_bytes() != weights  # the fp16 weights are in place

    checkpoint.export_model(run, out, force=True)
    weights, text = out.read_bytes(), card.read_text()
    monkeypatch.setattr(checkpoint, "model_card", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        checkpoint.export_model(run, out, force=True, dtype="bf16")
    assert out.read_bytes() == weights and card.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.md", "m.safetensors"]


def test_model_card_is_a_library_function_of_the_file_and_its_checkpoint(run, tmp_path):
    """``model_card`` renders the same card from the exported file and the checkpoint folder;
    anything else is refused with what it wants."""
    out = checkpoint.export_model(run, tmp_path / "m.safetensors")
    ck = run / "checkpoints" / "step_00000008"
    assert model_card(ck, out) == card_path(out).read_text()
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        model_card(run, out)
    atomic_write_text(tmp_path / "x.safetensors", "no tensors")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        model_card(ck, tmp_path / "x.safetensors")


def test_an_autoencoders_card_gives_its_latent_scale_not_a_process(tmp_path):
    """An exported autoencoder run (difflab train-autoencoder) is described as one: its measured
    latent scale factor read from the weights, no process, and how to encode and decode."""
    cfg = TrainConfig.from_dict({"model": {"name": "autoencoder_kl_tiny", "kwargs": {}}, "data": {"name": "digits"},
                                 "loss": "autoencoder", "sample": {"every": -1}, "batch_size": 8, "steps": 2,
                                 "ckpt_every": 2, "device": "cpu"})
    train_autoencoder(cfg, tmp_path / "ae", progress=False)
    out = dl.training.export_model(tmp_path / "ae", tmp_path / "ae.safetensors")
    card = card_path(out).read_text()
    scale = float(dl.load(tmp_path / "ae").ema_model.scaling_factor)
    model = card.split("## Model")[1].split("## Training")[0]
    assert "# ae\n\nAn autoencoder" in card and "process" not in model
    assert f"{scale:.6g} (1 / std of the training latents)" in card and "ae.encode_latents(x)" in card
