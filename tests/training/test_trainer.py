"""The trainer: exact resume, config checks, atomic checkpoints, NaN stop, dl.load round trip.

Every run here is a tiny MLP on a 2D toy set with labels (a few steps, well under a second).
"""

import csv
import json
import math

import pytest
import torch

import difflab as dl
from difflab.training import Trainer, TrainConfig, apply_overrides, checkpoint, load_config, read_checkpoint
from difflab.training.data import GlobalBatches
from difflab.training.loss import DiffusionLoss


def tiny(**changes) -> TrainConfig:
    d = {
        "model": {"name": "mlp", "kwargs": {"dim": 2, "width": 32, "depth": 2, "num_classes": 2, "dropout": 0.1}},
        "diffusion": {"schedule": "linear", "T": 100},
        "data": {"name": "toy2d", "kwargs": {"dataset": "swiss_roll", "n": 100}},
        "optim": {"lr": 1e-3, "warmup_steps": 3, "decay": "cosine"},
        "ema": {"decay": 0.9, "warmup": 2},
        "sample": {"every": -1},
        "batch_size": 16, "steps": 8, "log_every": 2, "ckpt_every": 4, "device": "cpu", "seed": 3,
    }
    cfg = TrainConfig.from_dict(d)
    return apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in changes.items()])


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _opt_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _opt_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _opt_equal(x, y)
    else:
        assert a == b


def test_resume_may_change_how_but_not_what_it_trains(tmp_path):
    """A resume may change the fields that change how a step runs (here activation_memory_budget,
    the backward's recomputation), not what it computes (here the learning rate)."""
    Trainer(tiny(steps=4), tmp_path / "r", progress=False).train()
    t = Trainer(tiny(steps=6, activation_memory_budget=0.5), tmp_path / "r", resume=True, progress=False)
    assert t.step == 4 and t.cfg.activation_memory_budget == 0.5
    with pytest.raises(ValueError, match="cannot resume .* optim.lr"):
        Trainer(tiny(steps=6, **{"optim.lr": 0.5}), tmp_path / "r", resume=True, progress=False)


def test_resume_after_kill_is_bit_identical(tmp_path):
    """8 steps straight == 4 steps, a crash (at step 7), then a resume from the step-4 checkpoint.

    Dropout is on, so the restored CPU generator state matters too; the EMA warm-up counter,
    AdamW moments and the cosine LR schedule all have to continue exactly.
    """
    cfg = tiny()
    Trainer(cfg, tmp_path / "a", progress=False).train()

    base = DiffusionLoss(dl.training.trainer.build_process(cfg))

    def killed_at_6(model, batch):
        if batch.step == 6:
            raise RuntimeError("simulated kill")
        return base(model, batch)

    with pytest.raises(RuntimeError, match="simulated kill"):
        Trainer(cfg, tmp_path / "b", loss_fn=killed_at_6, progress=False).train()
    assert checkpoint.latest_checkpoint(tmp_path / "b").name == "step_00000004"
    resumed = Trainer(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 4
    resumed.train()

    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    assert a["state"]["step"] == b["state"]["step"] == 8
    _states_equal(a["model"], b["model"])
    _states_equal(a["ema"], b["ema"])
    _opt_equal(a["optimizer"], b["optimizer"])
    _opt_equal(a["rng"], b["rng"])
    assert a["state"]["ema"] == b["state"]["ema"]
    # the log keeps one row per log point: the killed run's rows past step 4 were replaced
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "b" / "log.csv"))]
    assert steps == [2, 4, 6, 8]
    la = [r["loss"] for r in csv.DictReader(open(tmp_path / "a" / "log.csv"))]
    lb = [r["loss"] for r in csv.DictReader(open(tmp_path / "b" / "log.csv"))]
    assert la == lb
    # training time counts across the resume: the checkpoint holds it, and the log continues from it
    elapsed = [float(r["elapsed_s"]) for r in csv.DictReader(open(tmp_path / "b" / "log.csv"))]
    at_4 = read_checkpoint(tmp_path / "b" / "checkpoints" / "step_00000004")["state"]["elapsed_s"]
    assert elapsed == sorted(elapsed) and elapsed[2] >= at_4 > 0


def test_resume_with_incompatible_config_names_the_fields(tmp_path):
    cfg = tiny(steps=2, ckpt_every=2)
    Trainer(cfg, tmp_path, progress=False).train()
    other = apply_overrides(cfg, ["model.kwargs.width=64", "diffusion.schedule=cosine", "steps=4"])
    with pytest.raises(ValueError) as err:
        Trainer(other, tmp_path, resume=True, progress=False)
    msg = str(err.value)
    assert "model.kwargs.width" in msg and "32" in msg and "64" in msg
    assert "diffusion.schedule" in msg and "cosine" in msg
    assert "steps" not in msg.replace("diffusion.", "")  # steps may change on resume
    # starting over in a used folder without resume is refused too
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(cfg, tmp_path, progress=False)
    # and resuming with more steps (a compatible change) continues
    longer = Trainer(apply_overrides(cfg, ["steps=3"]), tmp_path, resume=True, progress=False)
    assert longer.train()["step"] == 3


def test_max_time_stops_with_a_checkpoint_and_the_resume_is_exact(tmp_path, monkeypatch):
    """A run out of max_time stops at a log point with a checkpoint; resumed with a larger budget,
    it ends with the weights of a run that never stopped. The clock is faked: 1 s per step."""
    cfg = tiny(ckpt_every=100)  # no periodic checkpoint: the early stop must write its own
    Trainer(cfg, tmp_path / "a", progress=False).train()

    clock = {"now": 0.0}
    monkeypatch.setattr(dl.training.trainer.time, "perf_counter", lambda: clock["now"])
    base = DiffusionLoss(dl.training.trainer.build_process(cfg))

    def one_second_per_step(model, batch):
        clock["now"] += 1.0
        return base(model, batch)

    def run(max_time, resume):
        c = apply_overrides(cfg, [f"max_time={max_time}"])
        return Trainer(c, tmp_path / "b", resume=resume, loss_fn=one_second_per_step, progress=False).train()

    # checked at the log points (every 2 steps): 2 s < 3 at step 2, 4 s >= 3 at step 4
    first = run(3, resume=False)
    assert first["stopped_by_max_time"] and first["step"] == 4
    assert checkpoint.latest_checkpoint(tmp_path / "b").name == "step_00000004"
    # the budget counts the time before the resume: 6 s >= 5 at step 6 (this process ran only 2 s)
    second = run(5, resume=True)
    assert second["stopped_by_max_time"] and second["step"] == 6
    assert checkpoint.latest_checkpoint(tmp_path / "b").name == "step_00000006"
    done = run(100, resume=True)
    assert not done["stopped_by_max_time"] and done["step"] == 8
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    _states_equal(a["model"], b["model"])
    _states_equal(a["ema"], b["ema"])
    _opt_equal(a["optimizer"], b["optimizer"])


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


def test_resuming_from_files_of_another_model_is_refused_with_the_file(tmp_path):
    """Weights or optimizer state copied from another run raised torch's size-mismatch traceback
    (the optimizer's only inside the first AdamW step); now a ValueError naming the file."""
    import shutil

    Trainer(tiny(steps=2, ckpt_every=2), tmp_path / "a", progress=False).train()
    Trainer(tiny(steps=2, ckpt_every=2, **{"model.kwargs.width": 16}), tmp_path / "b", progress=False).train()
    ck_a, ck_b = (tmp_path / r / "checkpoints" / "step_00000002" for r in ("a", "b"))
    for name, match in (("model.safetensors", "its weights do not fit the network"),
                        ("ema.safetensors", "its weights do not fit the network"),
                        ("optimizer.pt", r"its exp_avg of parameter 0 has shape \[16, .*the parameter \[32, ")):
        shutil.copy(ck_a / name, tmp_path / "keep")
        shutil.copy(ck_b / name, ck_a / name)
        with pytest.raises(ValueError, match=rf"cannot resume from .*{name.replace('.', '.')}': {match}"):
            Trainer(tiny(steps=4, ckpt_every=2), tmp_path / "a", resume=True, progress=False).train()
        shutil.copy(tmp_path / "keep", ck_a / name)
    Trainer(tiny(steps=4, ckpt_every=2), tmp_path / "a", resume=True, progress=False).train()  # restored: fine


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny(steps=12, ckpt_every=2, log_every=3)
    base = DiffusionLoss(dl.training.trainer.build_process(cfg))

    def nan_at_4(model, batch):
        loss = base(model, batch)
        return loss * float("nan") if batch.step == 4 else loss

    with pytest.raises(FloatingPointError) as err:
        Trainer(cfg, tmp_path, loss_fn=nan_at_4, progress=False).train()
    msg = str(err.value)
    assert "step 5" in msg and "update 4" in msg and "step_00000004" in msg and "lr" in msg
    # detected at the log point of step 6, before checkpoint 6 was written
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000004"
    run = dl.load(tmp_path)
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


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


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"precision": "fp8"}, ["'precision'", "fp8", "fp32, bf16, fp16"]),
        ({"optim": {"lr": -1}}, ["'optim.lr'", "-1", "> 0"]),
        ({"optim": {"lrr": 1}}, ["'optim.lrr'", "lr, betas"]),
        ({"model": {"name": "resnet"}}, ["'model.name'", "resnet", "mlp"]),
        ({"diffusion": {"prediction": "score"}}, ["'diffusion.prediction'", "eps, x0, v"]),
        ({"sample": {"sampler": "plms"}}, ["'sample.sampler'", "ddim"]),
        ({"batch_size": 10, "grad_accum": 3}, ["'batch_size'", "grad_accum = 3"]),
        ({"cond_drop_prob": 1.5}, ["'cond_drop_prob'", "< 1"]),
        ({"steps": 2.5}, ["'steps'", "integer"]),
        ({"data": {"name": "imagenet"}}, ["'data.name'", "digits", "toy2d"]),
        ({"ema": {"decay": 1.0}}, ["'ema.decay'", "< 1"]),
        ({"loss": "hinge"}, ["'loss'", "hinge", "diffusion, superres"]),
        ({"compile_options": {"modes": "max-autotune"}}, ["'compile_options'", "modes", "mode, backend"]),
        ({"compile_options": "max-autotune"}, ["'compile_options'", "mapping"]),
        ({"compile_options": {"mode": 3}}, ["'compile_options.mode'", "torch.compile mode"]),
        ({"compile_options": {"fullgraph": "yes"}}, ["'compile_options.fullgraph'", "true or false"]),
        ({"max_time": 0}, ["'max_time'", "> 0"]),
        ({"diffusion": {"weighting": "min_snr_-5"}}, ["'diffusion.weighting'", "gamma must be > 0"]),
        ({"max_time": "1h"}, ["'max_time'", "a number"]),
        ({"activation_memory_budget": 0}, ["'activation_memory_budget'", "> 0", "<= 1"]),
        ({"activation_memory_budget": 1.5}, ["'activation_memory_budget'", "<= 1"]),
    ],
)
def test_config_errors_name_the_field_and_the_allowed_values(changes, words):
    d = tiny().to_dict()
    for k, v in changes.items():
        if isinstance(v, dict):
            d[k].update(v)
        else:
            d[k] = v
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(d)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_config_files_and_overrides(tmp_path):
    cfg = tiny()
    for name in ("c.yaml", "c.json"):
        dl.training.save_config(cfg, tmp_path / name)
        assert load_config(tmp_path / name) == cfg
    assert apply_overrides(cfg, ["optim.lr=5e-4", "model.kwargs.width=8"]).optim.lr == 5e-4
    opts = apply_overrides(cfg, ["compile_options.mode=max-autotune"]).compile_options
    assert opts == {"mode": "max-autotune"}
    with pytest.raises(ValueError, match="no config field 'optim.nope'"):
        apply_overrides(cfg, ["optim.nope=1"])
    with pytest.raises(ValueError, match="field.path=value"):
        apply_overrides(cfg, ["steps"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    # the data must fit the model: a clear message, not a matmul error from deep inside
    with pytest.raises(ValueError, match="cannot take data 'toy2d' of shape"):
        Trainer(apply_overrides(cfg, ["model.kwargs.dim=3"]), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="cannot be split evenly"):
        with pytest.MonkeyPatch.context() as mp:  # as if under torchrun with 3 processes
            mp.setenv("WORLD_SIZE", "3")
            Trainer(cfg, tmp_path / "run", progress=False)


def test_batches_and_draws_are_functions_of_step():
    gb = GlobalBatches(10, 4, seed=0)
    seen = torch.cat([gb.indices(s) for s in range(5)])  # 20 = two epochs exactly
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(GlobalBatches(10, 4, seed=0).indices(3), gb.indices(3))
    assert not torch.equal(GlobalBatches(10, 4, seed=1).indices(0), gb.indices(0))
    assert gb.state(5) == {"epoch": 2, "position": 0, "n": 10, "batch_size": 4, "seed": 0}


def test_label_dropout_and_lr_schedule(tmp_path):
    """Labels are replaced by the null label at rate p; LR: linear warm-up, then cosine to 0."""
    cfg = tiny(cond_drop_prob=0.25, batch_size=64, steps=40, log_every=40, ckpt_every=40)
    seen = []

    base = DiffusionLoss(dl.training.trainer.build_process(cfg))

    def spy(model, batch):
        seen.append((batch.cond == 2).float().mean().item())
        assert torch.equal(batch.cond == 2, batch.u < 0.25)
        return base(model, batch)

    trainer = Trainer(cfg, tmp_path, loss_fn=spy, progress=False)
    f = dl.training.trainer._lr_factor(cfg)
    assert [f(k) for k in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert f(3 + (40 - 3) // 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 18 / 37)))
    lrs = []  # the rate each AdamW step uses
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    trainer.train()
    assert abs(sum(seen) / len(seen) - 0.25) < 0.04  # 2560 Bernoulli(0.25) draws: sd 0.009
    # the trainer steps with these rates (not only the helper): lr x f(k) at step k
    assert lrs == pytest.approx([1e-3 * f(k) for k in range(40)], rel=1e-6)


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


def test_ema_decay_zero_is_the_model_itself(tmp_path, monkeypatch):
    """decay 0 averages nothing: the EMA weights equal the model's after every step, so no copy
    is kept; checkpoints, resume and the (eval-mode) sample grid still work."""
    from difflab.training import trainer as trainer_mod

    modes = []
    real_generate = trainer_mod.generate

    def spy(model, *a, **k):
        modes.append(model.training)
        return real_generate(model, *a, **k)

    monkeypatch.setattr(trainer_mod, "generate", spy)
    cfg = tiny(ema={"decay": 0.0, "warmup": 2}, sample={"every": 0, "n": 4, "steps": 3})
    t = Trainer(cfg, tmp_path / "r", progress=False)
    assert t.ema.model is t.model
    t.train()
    assert modes == [False] and t.model.training  # the grid sampled in eval mode, then back to training
    ck = read_checkpoint(tmp_path / "r")
    _states_equal(ck["ema"], ck["model"])
    again = Trainer(apply_overrides(cfg, ["steps=10"]), tmp_path / "r", resume=True, progress=False)
    _states_equal({k: v.cpu() for k, v in again.model.state_dict().items()}, ck["model"])
    again.train()
    # a small decay keeps a copy that lags the model
    lag = Trainer(tiny(ema={"decay": 0.5, "warmup": 0}), tmp_path / "lag", progress=False)
    assert lag.ema.model is not lag.model
    lag.train()
    ck = read_checkpoint(tmp_path / "lag")
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"])


def test_grad_clip_bounds_the_gradient_that_adamw_steps_with(tmp_path):
    """optim.grad_clip scales the gradient to norm <= grad_clip before AdamW (the logged norm is
    the one before clipping); 0 leaves it as computed. No test failed with clipping turned off."""
    norms = {}
    for clip in (1e-3, 0.0):
        trainer = Trainer(tiny(steps=1, **{"optim.grad_clip": clip}), tmp_path / f"c{clip}", progress=False)
        _, logged = trainer.train_step()
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
        norms[clip] = (float(logged), float(after))
    logged, after = norms[1e-3]
    assert logged > 1e-2 and after == pytest.approx(1e-3, rel=1e-4)  # clipped, the norm before it logged
    logged, after = norms[0.0]
    assert after == pytest.approx(logged, rel=1e-5) and after > 1e-2  # not clipped


def test_processes_draw_their_own_dropout_masks_from_one_network(tmp_path, monkeypatch):
    """Under torchrun every process seeded its generator alike, so process r's dropout masks
    copied process 0's. The network is still built alike (the same weights), then process r > 0
    reseeds; process 0 keeps one process's stream."""
    states, weights = {}, {}
    for rank in (0, 1):
        monkeypatch.setattr(dl.training.trainer, "_dist_env", lambda r=rank: (r, 1, 0))
        trainer = Trainer(tiny(), tmp_path / f"r{rank}", progress=False)
        states[rank], weights[rank] = torch.get_rng_state(), trainer.model.state_dict()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(states[0], states[1])
    monkeypatch.setattr(dl.training.trainer, "_dist_env", lambda: (0, 1, 0))
    torch.manual_seed(tiny().seed)
    dl.training.build.build_model(tiny())
    assert torch.equal(torch.get_rng_state(), states[0])  # process 0: the stream right after building


def test_a_nan_stop_names_the_checkpoint_in_every_process(tmp_path):
    """Only process 0 writes checkpoints and knew the path: the others said none was written."""
    trainer = Trainer(tiny(steps=2, ckpt_every=2), tmp_path, progress=False)
    trainer.train()
    with pytest.raises(FloatingPointError, match=r"the last good checkpoint is .*step_00000002"):
        trainer._stop_on_nan(3, None)



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
