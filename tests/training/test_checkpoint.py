"""Checkpoints (difflab.training.checkpoint): atomic saves that survive a failed write or a crash,
dl.load round trips, exported model files. Runs: the tiny MLP of tiny_config.py."""

import pytest
import torch
from tiny_config import tiny, tiny_under

import difflab as dl
from difflab.training import Trainer, checkpoint


def test_checkpoint_write_failure_leaves_last_good_checkpoint(tmp_path, monkeypatch):
    """The second checkpoint fails half-way (disk full while writing ema.safetensors)."""
    cfg = tiny(steps=4, ckpt_every=2)
    calls = {"n": 0}
    real = checkpoint.save_file

    def flaky(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # checkpoint 2: model written, ema fails
            raise OSError(28, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", flaky)
    with pytest.raises(OSError, match="No space"):
        Trainer(cfg, tmp_path, progress=False).train()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002"]
    run = dl.load(tmp_path)
    assert run.step == 2

    # a hard kill (no cleanup) leaves a temporary folder: it is never taken for a checkpoint
    junk = root / ".tmp-step_00000004-deadbeef"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"\x00" * 10)
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000002"
    monkeypatch.setattr(checkpoint, "save_file", real)
    Trainer(cfg, tmp_path, resume=True, progress=False).train()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004"]


def test_a_crash_while_re_saving_a_step_keeps_it_resumable(tmp_path, monkeypatch):
    """Re-saving the step of an existing checkpoint moves the old copy aside, then renames the
    new one into place: a crash between the two left ``latest`` naming a missing folder and
    nothing to resume. The copy moved aside is found instead."""
    import os

    cfg = tiny(steps=2, ckpt_every=2)
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.train()
    root = tmp_path / "checkpoints"
    renames, real = [], os.rename

    def crash_on_second(src, dst):
        renames.append((str(src), str(dst)))
        if len(renames) == 2:  # the old copy is aside; the new one is not yet in place
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.setattr(checkpoint.os, "rename", real)
    assert not (root / "step_00000002").exists() and (root / "latest").read_text().strip() == "step_00000002"
    found = checkpoint.latest_checkpoint(tmp_path)
    assert found is not None and found.name.startswith(".old-step_00000002-")
    assert dl.load(tmp_path).step == 2
    Trainer(tiny(steps=4, ckpt_every=2), tmp_path, resume=True, progress=False).train()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000004"]  # the copy aside pruned
    assert dl.load(tmp_path).step == 4


def test_load_round_trip_gives_identical_samples(tmp_path):
    cfg = tiny(steps=3, ckpt_every=3)
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.train()
    before = dl.training.generate.generate(trainer.ema.model.eval(), trainer.proc, 6, (2,), sampler="ddim",
                                           steps=5, guidance=2.0, labels=[0, 1, 0, 1, 1, 0], seed=11)
    run = dl.load(tmp_path)
    assert run.num_classes == 2 and run.step == 3 and not run.ema_model.training
    assert isinstance(run.proc, dl.GaussianDiffusion) and run.proc.T == 100
    after = run.sample(6, "ddim", 5, guidance=2.0, labels=[0, 1, 0, 1, 1, 0], seed=11)
    assert torch.equal(before, after)
    assert not torch.equal(after, run.sample(6, "ddim", 5, guidance=2.0, labels=[0, 1, 0, 1, 1, 0], seed=12))
    with pytest.raises(ValueError, match="labels must lie in 0 .. 1"):
        run.sample(2, labels=5)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        dl.load(tmp_path / "samples" if (tmp_path / "samples").exists() else tmp_path / "log.csv")


def test_exported_model_file_loads_and_samples_like_the_run(tmp_path, capsys):
    """``difflab export`` writes one .safetensors file (weights + config in its metadata):
    fp32 samples exactly as the run's EMA model, fp16 within its rounding, --raw the raw weights."""
    from difflab.cli import main

    trainer = Trainer(tiny(steps=3, ckpt_every=3), tmp_path / "run", progress=False)
    trainer.train()
    run = dl.load(tmp_path / "run")
    kw = dict(guidance=2.0, labels=[0, 1, 0, 1, 1, 0], seed=11)
    ref = run.sample(6, "ddim", 5, **kw)
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "m.safetensors" in capsys.readouterr().out
    one = dl.load(tmp_path / "m.safetensors")
    assert one.num_classes == 2 and one.step == 3 and one.proc.T == 100 and one.sample_shape == run.sample_shape
    assert torch.equal(one.sample(6, "ddim", 5, **kw), ref)
    half = dl.load(dl.training.export_model(tmp_path / "run", tmp_path / "h.safetensors", dtype="fp16"))
    assert next(half.ema_model.parameters()).dtype == torch.float32  # cast back on loading
    err = (half.sample(6, "ddim", 5, **kw) - ref).abs().max()
    assert 0 < err < 1e-2, err  # fp16 weights: rounding only
    assert (tmp_path / "h.safetensors").stat().st_size < 0.6 * (tmp_path / "m.safetensors").stat().st_size
    raw = dl.load(dl.training.export_model(tmp_path / "run", tmp_path / "r.safetensors", ema=False))
    torch.testing.assert_close(dict(raw.model.state_dict()), dict(run.model.state_dict()), rtol=0, atol=0)
    # mistakes: named, with the fix
    with pytest.raises(ValueError, match="dtype must be one of fp32, fp16, bf16"):
        dl.training.export_model(tmp_path / "run", tmp_path / "x.safetensors", dtype="int8")
    with pytest.raises(ValueError, match="must name a .safetensors file"):
        dl.training.export_model(tmp_path / "run", tmp_path / "x.pt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="holds no difflab model"):
        dl.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        dl.load(tmp_path / "junk.safetensors")
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_a_network_sampled_under_another_process_than_its_own_is_refused(tmp_path):
    """dl.load's networks name the process they were trained under (``trained_process``): a flow
    network sampled under the DDPM chain (or a DDPM network under another schedule) would read
    its outputs at other noise levels or as another prediction; dl.sample and dl.invert refuse,
    naming both processes and the fix, also through the speed layer's wrapper. The run's own
    process, or one built alike, samples."""
    Trainer(tiny_under("flow", steps=2, ckpt_every=2), tmp_path / "flow", progress=False).train()
    Trainer(tiny(steps=2, ckpt_every=2), tmp_path / "ddpm", progress=False).train()
    flow, ddpm = dl.load(tmp_path / "flow"), dl.load(tmp_path / "ddpm")
    assert flow.ema_model.trained_process is flow.proc and flow.model.trained_process is flow.proc
    cond = torch.tensor([0, 1])
    for model in (flow.ema_model, dl.accel.accelerate(flow.ema_model)):
        with pytest.raises(ValueError, match=r"trained under FlowMatching\(.*\) but is sampled under "
                                             r"GaussianDiffusion\(.*dl\.load\(\.\.\.\)\.proc"):
            dl.sample(model, ddpm.proc, (2, 2), "ddim", 3, cond=cond)
    with pytest.raises(ValueError, match="trained under GaussianDiffusion.*linear.*sampled under GaussianDiffusion.*cosine"):
        dl.sample(ddpm.ema_model, dl.GaussianDiffusion(dl.schedules.cosine(100)), (2, 2), "ddim", 3, cond=cond)
    with pytest.raises(ValueError, match="trained under GaussianDiffusion.*sampled under FlowMatching"):
        dl.invert(ddpm.ema_model, flow.proc, torch.zeros(2, 2), steps=3, cond=cond)
    # its own process (clip_x0 aside, the samplers' option), or one built alike: no error
    alike = dl.processes.FlowMatching(clip_x0=None)
    x = dl.sample(flow.ema_model, alike, (2, 2), "ddim", 3, cond=cond, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, flow.sample(2, "ddim", 3, labels=[0, 1], seed=0))
    assert dl.invert(flow.ema_model, flow.proc, x, steps=3, cond=cond).shape == (2, 2)
    # an exported model names its process too
    dl.training.export_model(tmp_path / "flow", tmp_path / "flow.safetensors")
    one = dl.load(tmp_path / "flow.safetensors")
    with pytest.raises(ValueError, match="trained under FlowMatching"):
        dl.sample(one.ema_model, ddpm.proc, (2, 2), "ddim", 3, cond=cond)
