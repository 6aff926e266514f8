"""A distillation run (training/distill_run.py) on a tiny teacher: the run folders each method
writes, the student's config, the weights it starts from, how it samples, resuming, and the
refusals. Its command-line use: tests/cli/test_cli_distill.py.

The students here train with a learning rate of 1e-9 (``KEEP``): Adam moves each weight by about
the learning rate a step, so after two steps a student still holds the weights it started from."""

import shutil
from pathlib import Path

import pytest
import torch
from latent_runs import autoencoder_run, latent_config
from tiny_config import tiny

import difflab as dl
from difflab.training import TrainConfig, distill_run
from difflab.training.distill_run import ROUNDS_DIR, distill

KEEP = ["optim.lr=1e-9"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """tiny(): a class-conditional (2 classes, label dropout 0.1) eps-MLP on the DDPM chain, T = 100, 20 steps."""
    folder = tmp_path_factory.mktemp("teacher") / "run"
    dl.training.train(tiny(steps=20, ckpt_every=20), folder, progress=False)
    return folder


def _same_weights(student: dict, teacher: dict, prefix: str = "") -> None:
    """Every teacher weight is the student's (under ``prefix``), within what two steps at lr 1e-9 move."""
    for name, weight in teacher.items():
        torch.testing.assert_close(student[prefix + name], weight, rtol=0, atol=1e-6)


def _ddim_levels(run, steps: int) -> list:
    """The noise levels a run's own DDIM sampling at ``steps`` steps goes through (0 at the end)."""
    seen = []
    run.sample(1, "ddim", steps, labels=0, seed=0, callback=lambda d: seen.append(float(d["sigma"])))
    return seen + [0.0]


def test_progressive_rounds_halve_the_teachers_ddim_levels_from_its_weights(teacher, tmp_path):
    """start_steps = 8 -> 2: round 1 (8 -> 4) in OUT/rounds/004, round 2 (4 -> 2) in OUT, each
    a run folder on every second level of its teacher's, v-predicting, from its teacher's weights;
    the student samples on its levels and refuses other step counts."""
    out = tmp_path / "pd"
    result = distill(teacher, out, "progressive", start_steps=8, steps=2, train_steps=2, overrides=KEEP,
                     progress=False)
    t = dl.load(teacher)
    first, last = dl.load(out / ROUNDS_DIR / "004"), dl.load(out)
    assert [r["out"] for r in result["rounds"]] == [str(out / ROUNDS_DIR / "004"), str(out)]
    assert result["checkpoint"] == str(last.path) and first.step == last.step == 2
    assert sorted(p.name for p in (out / ROUNDS_DIR).iterdir()) == ["004"]
    one, two = first.config.distill, last.config.distill
    assert one.method == two.method == "progressive"
    assert (Path(one.teacher), one.teacher_step) == (Path(t.path).resolve(), 20)  # the teacher's checkpoint
    assert (Path(two.teacher), two.teacher_step) == (Path(first.path).resolve(), 2)  # round 1's
    levels = _ddim_levels(t, 8)
    assert len(levels) == 9
    torch.testing.assert_close(torch.tensor(one.sigmas), torch.tensor(levels[::2]), rtol=1e-6, atol=0)
    assert two.sigmas == one.sigmas[::2] and len(two.sigmas) == 3
    # an eps teacher's student predicts v: its first steps learn the teacher's denoiser; a v teacher's does not
    assert one.reparam_steps > 0 and two.reparam_steps == 0
    for run, cfg in ((first, one), (last, two)):
        assert run.config.diffusion.prediction == run.proc.prediction == "v"
        assert (run.config.sample.sampler, run.config.sample.steps) == ("ddim", len(cfg.sigmas) - 1)
        assert run.ema_model.distilled_sigmas == tuple(cfg.sigmas)
        assert not run.config.consistency_model
    _same_weights(first.ema_model.state_dict(), t.ema_model.state_dict())
    _same_weights(last.ema_model.state_dict(), first.ema_model.state_dict())
    assert _ddim_levels(last, 2) == pytest.approx(two.sigmas, rel=1e-9)
    x = last.sample(4, steps=2, labels=1, seed=0)
    assert x.shape == (4, 2) and torch.isfinite(x).all()
    for steps in (1, 3, 8):
        with pytest.raises(ValueError, match=f"steps={steps}: this student was distilled for 2 steps .*steps=2"):
            last.sample(4, steps=steps, labels=1, seed=0)
    with pytest.raises(ValueError, match="not the student's steps"):
        last.sample(4, sigmas=[one.sigmas[1], 0.0], labels=1, seed=0)


@pytest.mark.parametrize("given", ["diffusion.prediction=eps", "diffusion.prediction='eps'",
                                   "diffusion.prediction=null"])  # null: the process's default, eps
def test_a_progressive_student_keeps_a_prediction_type_it_is_given(teacher, tmp_path, given):
    """--set diffusion.prediction=eps: the student keeps its eps teacher's parameterisation, so it
    starts as its teacher and has no re-parameterisation phase."""
    out = tmp_path / "pd_eps"
    distill(teacher, out, "progressive", start_steps=4, steps=2, train_steps=2, overrides=KEEP + [given],
            progress=False)
    t, run = dl.load(teacher), dl.load(out)
    assert run.config.diffusion.resolved_prediction == run.proc.prediction == "eps"
    assert run.config.distill.reparam_steps == 0
    _same_weights(run.ema_model.state_dict(), t.ema_model.state_dict())
    assert torch.isfinite(run.sample(4, steps=2, labels=1, seed=0)).all()


def test_a_consistency_student_wraps_its_teachers_network_and_samples_in_one_call_per_step(teacher, tmp_path):
    out = tmp_path / "cd"
    distill(teacher, out, "consistency", train_steps=2, overrides=KEEP, progress=False)
    t, run = dl.load(teacher), dl.load(out)
    d = run.config.distill
    assert (d.method, Path(d.teacher), d.teacher_step, d.sigmas) == ("consistency", Path(t.path).resolve(), 20, None)
    c = run.config.consistency
    assert (c.net_prediction, run.config.diffusion.prediction) == ("v", "x0")  # v for an eps teacher
    assert c.boundary == t.proc.sigma_min and d.reparam_steps > 0
    assert (run.config.sample.sampler, run.config.sample.steps, run.config.sample.guidance) == ("consistency", 1, 1.0)
    # the student samples with its own sampler unless told (run.sample, difflab sample and eval); the teacher with DDIM 50
    assert run.sampling_defaults() == ("consistency", 1) and t.sampling_defaults() == ("ddim", 50)
    torch.testing.assert_close(run.sample(3, labels=1, seed=0), run.sample(3, "consistency", 1, labels=1, seed=0))
    model = run.ema_model
    assert isinstance(model, dl.models.ConsistencyModel) and model.net_prediction == "v" and not model.guidance_input
    assert model.boundary == t.proc.sigma_min and run.proc.prediction == "x0"
    assert set(model.state_dict()) == {f"net.{k}" for k in t.ema_model.state_dict()}
    _same_weights(model.state_dict(), t.ema_model.state_dict(), prefix="net.")
    batches = []
    model.net.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    x1 = run.sample(5, sampler="consistency", steps=1, labels=1, seed=0)
    assert x1.shape == (5, 2) and torch.isfinite(x1).all() and batches == [5]
    # one step is f at the top level: DDIM's single step (to its x0 estimate) from the same noise
    torch.testing.assert_close(x1, run.sample(5, "ddim", 1, labels=1, seed=0))
    batches.clear()
    x2 = run.sample(5, sampler="consistency", steps=2, labels=1, seed=0)
    assert batches == [5, 5] and not torch.allclose(x1, x2)
    batches.clear()
    run.sample(5, "consistency", 2, guidance=2.0, labels=1, seed=0)  # no guidance input: the guidance pair
    assert batches == [10, 10]


def test_a_guided_student_takes_the_scale_as_input_and_starts_as_its_teachers_network(teacher, tmp_path):
    out = tmp_path / "lcm"
    distill(teacher, out, "guided", train_steps=2, overrides=KEEP, progress=False)
    t, run = dl.load(teacher), dl.load(out)
    cfg = run.config
    assert (cfg.distill.method, cfg.distill.teacher_step, cfg.consistency.net_prediction) == ("guided", 20, "v")
    assert cfg.model.kwargs["guidance_embed"] is True and cfg.cond_drop_prob == 0 and cfg.consistency_model
    net = run.ema_model.net
    assert run.ema_model.guidance_input and net.guidance_input
    assert float(net.guidance_embed[-1].weight.abs().max()) < 1e-6  # zero-initialised, and kept at lr 1e-9
    _same_weights(run.ema_model.state_dict(), t.ema_model.state_dict(), prefix="net.")
    g = torch.Generator().manual_seed(0)
    x, times, cond = torch.randn(6, 2, generator=g), torch.tensor([0, 5, 20, 50, 80, 99]), torch.tensor([0, 1, 2] * 2)
    with torch.no_grad():
        expected = t.ema_model(x, times, cond)
        for w in (1.0, 2.0, 3.0, torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0, 7.0])):
            torch.testing.assert_close(net(x, times, cond, guidance=w), expected, rtol=0, atol=1e-5)
    seen = []
    net.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args[0].shape[0], kwargs.get("guidance"))),
                                  with_kwargs=True)
    x = run.sample(4, "consistency", steps=2, guidance=2.0, labels=1, seed=0)
    assert x.shape == (4, 2) and torch.isfinite(x).all()
    assert [(n, w.tolist()) for n, w in seen] == [(4, [2.0] * 4), (4, [2.0] * 4)]  # once per step, w the input


def test_a_distillation_resumes_and_keeps_its_finished_rounds(teacher, tmp_path, monkeypatch, capsys):
    # consistency: stopped at 2 steps, refused without resume, continued to 4
    out = tmp_path / "cd"
    distill(teacher, out, "consistency", train_steps=2, progress=False)
    with pytest.raises(FileExistsError, match="already holds a distillation .*resume=True"):
        distill(teacher, out, "consistency", train_steps=4, progress=False)
    capsys.readouterr()
    distill(teacher, out, "consistency", train_steps=4, resume=True, progress=False)
    resumed = f"resuming from {out / 'checkpoints' / 'step_00000002'} at step 2"  # (the trainer's line)
    assert resumed in capsys.readouterr().err
    assert dl.load(out).step == 4
    with pytest.raises(ValueError, match="cannot resume the distillation .*consistency.solver"):
        distill(teacher, out, "consistency", train_steps=6, resume=True, progress=False,
                overrides=["consistency.solver=heun"])

    # progressive: killed in round 2 after its step-2 checkpoint; resuming keeps round 1 and continues round 2
    pd = tmp_path / "pd"

    class Killed(RuntimeError):
        pass

    class KilledInRound2(distill_run.Trainer):
        def save(self, *args, **kwargs):
            path = super().save(*args, **kwargs)
            if Path(self.out) == pd and self.step == 2:
                raise Killed("killed")
            return path

    args = {"start_steps": 8, "steps": 2, "train_steps": 4, "overrides": ["ckpt_every=2"], "progress": False}
    with monkeypatch.context() as m:
        m.setattr(distill_run, "Trainer", KilledInRound2)
        with pytest.raises(Killed):
            distill(teacher, pd, "progressive", **args)
    round1 = pd / ROUNDS_DIR / "004"
    assert dl.load(round1).step == 4 and dl.load(pd).step == 2
    weights = (round1 / "checkpoints" / "step_00000004" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds"):
        distill(teacher, pd, "progressive", **args)
    notes = []
    capsys.readouterr()
    result = distill(teacher, pd, "progressive", resume=True, say=notes.append, **args)
    assert result["rounds"][0]["kept"] and f"{round1}: finished (step 4), kept" in notes
    assert f"resuming from {pd / 'checkpoints' / 'step_00000002'} at step 2" in capsys.readouterr().err
    assert dl.load(pd).step == 4 and dl.load(pd).config.distill.teacher_step == 4
    assert (round1 / "checkpoints" / "step_00000004" / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in (round1 / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]


def test_distillation_refusals(teacher, tmp_path):
    """Each refused before any work: nothing is written to out."""
    out = tmp_path / "out"
    for target in (teacher, teacher.parent):
        with pytest.raises(ValueError, match="holds the teacher .*distil into another folder"):
            distill(teacher, target, "consistency", train_steps=1, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume in .*start without --resume"):
        distill(teacher, out, "consistency", train_steps=1, resume=True, progress=False)
    with pytest.raises(ValueError, match="method must be one of progressive, consistency, guided, got 'reflow'"):
        distill(teacher, out, "reflow", progress=False)
    # another process than the teacher's: another DDPM schedule, or EDM
    for cfg in (tiny(**{"diffusion.schedule": "cosine"}),
                tiny(**{"diffusion.process": "edm", "diffusion.T": 1000})):
        with pytest.raises(ValueError, match="the config's process .* is not the teacher's .*diffusion section"):
            distill(teacher, out, "consistency", config=cfg, train_steps=1, progress=False)
    # another data set (another prediction is the student's own choice: fine)
    with pytest.raises(ValueError, match="the config's data .*'moons'.* is not the teacher's"):
        distill(teacher, out, "consistency", config=tiny(**{"data.kwargs.dataset": "moons"}), progress=False)
    for start, steps in ((12, 4), (6, 4), (4, 4), (2, 4)):
        with pytest.raises(ValueError, match=f"start_steps = {start} .*steps = {steps} .*power of two"):
            distill(teacher, out, "progressive", start_steps=start, steps=steps, train_steps=1, progress=False)
    assert not out.exists()
    # a guided distillation of an unconditional teacher
    uncond = tmp_path / "uncond"
    dl.training.train(tiny(**{"model.kwargs.num_classes": None, "cond_drop_prob": 0, "steps": 2}), uncond,
                      progress=False)
    with pytest.raises(ValueError, match="class-conditional teacher .*is unconditional: use --method consistency"):
        distill(uncond, out, "guided", train_steps=1, progress=False)
    assert not out.exists()


def test_a_student_at_another_resolution_than_its_teacher_is_refused(tmp_path):
    """An 8x8 digits teacher (flattened, a tiny MLP); a config of the 16x16 digits: refused, naming
    the teacher's resolution."""
    d = {"model": {"name": "mlp", "kwargs": {"dim": 64, "width": 16, "depth": 1, "num_classes": 10}},
         "data": {"name": "digits", "flatten": True}, "sample": {"every": -1}, "batch_size": 16, "steps": 1,
         "ckpt_every": 1, "device": "cpu"}
    dl.training.train(TrainConfig.from_dict(d), tmp_path / "teacher", progress=False)
    big = TrainConfig.from_dict({**d, "model": {"name": "mlp", "kwargs": {**d["model"]["kwargs"], "dim": 256}},
                                 "data": {"name": "digits", "flatten": True, "kwargs": {"image_size": 16}}})
    with pytest.raises(ValueError, match=r"data .*'image_size': 16.* not the teacher's .*resolution \(1, 8, 8\)"):
        distill(tmp_path / "teacher", tmp_path / "out", "consistency", config=big, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_progressive_round_stopped_by_max_time_ends_the_call_and_resumes(teacher, tmp_path):
    """max_time stops a round early: the next round is not trained from its unfinished student
    (its config would name that step as its teacher's, and the resume would then be refused);
    resume=True finishes the round, then the rounds after it."""
    out = tmp_path / "pd"
    args = dict(start_steps=8, steps=2, train_steps=4, progress=False)
    result = distill(teacher, out, "progressive", overrides=["max_time=1e-9", "log_every=1"], **args)
    assert not result["finished"] and result["rounds"][-1]["stopped_early"]
    assert dl.load(out / ROUNDS_DIR / "004").step == 1
    assert not (out / "checkpoints").exists()
    result = distill(teacher, out, "progressive", resume=True, **args)
    assert result["finished"]
    student = dl.load(out)
    assert student.step == 4 and student.config.distill.teacher_step == 4


def test_a_latent_teachers_student_takes_the_teachers_own_autoencoder(tmp_path):
    """A latent teacher's student encodes its data with, copies and decodes by the autoencoder the
    teacher carries (RUN/autoencoder, the weights its latents came from), not the folder the teacher's
    config names, which may have moved or been retrained since."""
    ae = autoencoder_run(tmp_path / "ae")
    dl.training.train(latent_config(ae, steps=2), tmp_path / "teacher", progress=False)
    shutil.rmtree(ae)  # the folder the teacher was trained from is gone
    distill(tmp_path / "teacher", tmp_path / "student", "consistency", train_steps=1, overrides=KEEP, progress=False)
    student, teacher = dl.load(tmp_path / "student"), dl.load(tmp_path / "teacher")
    assert Path(student.config.latent.autoencoder) == (tmp_path / "teacher" / "autoencoder").resolve()
    for name, weight in teacher.autoencoder.state_dict().items():
        assert torch.equal(student.autoencoder.state_dict()[name], weight), name
    x = student.sample(2, labels=1, seed=0)
    assert x.shape == (2, *teacher.image_shape) and float(x.abs().max()) <= 1.0
