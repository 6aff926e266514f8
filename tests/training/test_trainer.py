"""The trainer (difflab.training.trainer): exact resume, max_time, NaN stop, label dropout and LR
schedule, EMA, gradient clipping, per-process dropout streams, every diffusion process. Its
config: test_config.py; its checkpoints, dl.load and export: test_checkpoint.py.

Every run here is a tiny MLP on a 2D toy set with labels (a few steps, well under a second), but
the one per process that learns (a few seconds each).
"""

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from tiny_config import tiny, tiny_under

import difflab as dl
from difflab.cli import main
from difflab.models.masked import WithKnown
from difflab.training import Trainer, apply_overrides, checkpoint, read_checkpoint
from difflab.training.loss import DiffusionLoss


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


# ----------------------------------------------------------------------- every process
# The options of each process on the 8-Gaussians toy set (modes at radius 1.4, spread 0.1): VE's
# sigma_max about the largest distance between two points (Song & Ermon 2020); flow with OT coupling.
PROCESS_OPTIONS = {"ddpm": {}, "vp": {}, "ve": {"sigma_max": 5.0}, "edm": {}, "flow": {"coupling": "ot"}}
MODES = 1.4 * torch.stack([torch.tensor([math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)]) for k in range(8)])


def _to_nearest_mode(x: torch.Tensor) -> float:
    """Mean distance of the points x [N, 2] to the nearest of the 8 modes (0.08 for the data itself)."""
    return float(torch.cdist(x.double(), MODES.double()).min(1).values.mean())


@pytest.mark.parametrize("process", list(PROCESS_OPTIONS))
def test_a_short_run_of_every_process_lowers_its_loss_and_samples_near_the_data(process, tmp_path):
    """400 steps of a small MLP (about 3 s) under each process: its own training times in every
    batch (long on the DDPM grid, float otherwise); the loss on fixed draws at most 0.8 of the
    initial network's (measured: 0.18 - 0.69); dl.load's samples (the default sampler, ddim, on
    the process's own spacing) at most 0.7 of a standard normal draw's distance to the modes
    (measured: 0.30 - 0.39 against 0.65; the data's own: 0.08)."""
    cfg = tiny_under(process, PROCESS_OPTIONS[process], steps=400, log_every=100, ckpt_every=400, batch_size=64,
                     **{"data.kwargs": {"dataset": "8gaussians", "n": 512},
                        "model.kwargs": {"dim": 2, "width": 64, "depth": 2}, "optim.lr": 3e-3,
                        "optim.warmup_steps": 10, "ema.decay": 0.0})
    trainer = Trainer(cfg, tmp_path, progress=False)
    proc = trainer.proc
    assert proc.signature() == dl.training.build.build_process(cfg).signature()
    t = next(trainer._micro_batches(0)).t
    g = dl.training.data.step_generator(torch.Generator(), cfg.seed, 0)
    assert torch.equal(t, proc.training_times(64, generator=g))  # the process's draws, from the step's stream
    assert (t.dtype == torch.long) == (process == "ddpm")
    initial = copy.deepcopy(trainer.model).eval()
    trainer.train()

    def loss(model):
        with torch.no_grad():
            return float(proc.training_loss(model.eval(), trainer.x, generator=torch.Generator().manual_seed(5)))

    assert loss(trainer.model) < 0.8 * loss(initial), (loss(trainer.model), loss(initial))
    run = dl.load(tmp_path)
    assert run.proc.signature() == proc.signature()
    x = run.sample(1000, steps=20, seed=0)
    normal = _to_nearest_mode(torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(x).all() and _to_nearest_mode(x) < 0.7 * normal, (_to_nearest_mode(x), normal)
    if process == "edm":  # the network inside EDM's preconditioning: one layout for every EDM run
        assert isinstance(run.ema_model, dl.models.EDMPrecond) and run.ema_model.sigma_data == proc.sigma_data
        assert all(k.startswith("net.") for k in read_checkpoint(tmp_path)["model"])


def test_a_flow_run_with_ot_coupling_resumes_exactly(tmp_path):
    """The resume of test_resume_after_kill_is_bit_identical under flow matching with minibatch
    optimal-transport coupling: the pairing is solved from the batch's own draws (deterministic),
    so 4 steps + a resume equal 8 straight. The coupling is in force: independent pairing trains
    other weights from the same draws."""
    cfg = tiny_under("flow", {"coupling": "ot"})
    Trainer(cfg, tmp_path / "a", progress=False).train()
    Trainer(apply_overrides(cfg, ["steps=4"]), tmp_path / "b", progress=False).train()
    resumed = Trainer(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 4
    resumed.train()
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    _states_equal(a["model"], b["model"])
    _states_equal(a["ema"], b["ema"])
    _opt_equal(a["optimizer"], b["optimizer"])
    Trainer(tiny_under("flow", {"coupling": "independent"}), tmp_path / "i", progress=False).train()
    independent = read_checkpoint(tmp_path / "i")["model"]
    assert any(not torch.equal(a["model"][k], independent[k]) for k in independent)


def test_a_checkpoint_from_before_the_process_field_resumes_as_ddpm(tmp_path):
    """A checkpoint's config.yaml written before diffusion.process existed (no process fields,
    ``prediction: eps`` spelled out, as the old default was) loads as the DDPM chain and resumes
    under today's config of the run, whose prediction is null (the process's default, eps)."""
    import hashlib

    import yaml

    Trainer(tiny(steps=4, ckpt_every=4), tmp_path, progress=False).train()
    ck = checkpoint.latest_checkpoint(tmp_path)
    old = tiny(steps=4, ckpt_every=4).to_dict()
    old["diffusion"] = {"schedule": "linear", "T": 100, "schedule_kwargs": {}, "prediction": "eps", "weighting": None}
    (ck / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    sums = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in ck.iterdir() if f.name != checkpoint.MANIFEST}
    (ck / checkpoint.MANIFEST).write_text("".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))
    run = dl.load(tmp_path)
    assert run.config.diffusion.process == "ddpm" and run.proc.prediction == "eps"
    assert isinstance(run.proc, dl.GaussianDiffusion) and run.proc.T == 100
    assert tiny().diffusion.prediction is None
    assert Trainer(tiny(steps=6, ckpt_every=2), tmp_path, resume=True, progress=False).train()["step"] == 6


def test_a_mask_conditioned_run_writes_its_sample_grid_with_nothing_given(tmp_path):
    """A mask-conditioned network cannot be called bare: the trainer's grid samples it with nothing
    given (zero known data, an all-ones mask), the unconditional task its loss also trains (it failed
    with the bare model's error at the first grid); run.sample and `difflab sample` bind the same."""
    config = Path(__file__).resolve().parents[2] / "configs" / "moving_digits_masked.yaml"
    sets = ["steps=1", "batch_size=2", "data.kwargs.n=4", "model.kwargs.channels=8", "sample.every=0",
            "sample.steps=2", "sample.per_class=1", "ckpt_every=1"]
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet",
                 *[a for kv in sets for a in ("--set", kv)]]) == 0
    assert (tmp_path / "run" / "samples" / "step_00000001.png").stat().st_size > 0
    run = dl.load(tmp_path / "run")
    n = run.num_classes
    bound = WithKnown(run.ema_model, torch.zeros(n, *run.sample_shape), torch.ones(1, 1, 1, 1, 1))
    kw = dict(guidance=run.config.sample.guidance, labels=torch.arange(n), seed=0)
    x = run.sample(n, "ddim", 2, model=bound, **kw)
    assert x.shape == (n, *run.sample_shape) and torch.isfinite(x).all()
    assert torch.equal(run.sample(n, "ddim", 2, **kw), x)  # run.sample (difflab sample) binds the same
    assert main(["sample", "--ckpt", str(tmp_path / "run"), "--n", "2", "--steps", "1", "--out",
                 str(tmp_path / "clips.gif")]) == 0
