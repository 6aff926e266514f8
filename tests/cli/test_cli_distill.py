"""`difflab distill` end to end on a tiny teacher: the student run it writes, `difflab sample`
keeping the student's sampler and steps, `difflab train --resume` refusing a student, bad flags."""

import json

import pytest
import torch
import yaml

import difflab as dl
from difflab.cli import main
from difflab.training.checkpoint import LoadedRun

TEACHER = {  # a class-conditional eps-MLP on a 2-D toy set, DDPM chain with T = 100 (20 steps, well under a second)
    "model": {"name": "mlp", "kwargs": {"dim": 2, "width": 32, "depth": 2, "num_classes": 2}},
    "diffusion": {"schedule": "linear", "T": 100},
    "data": {"name": "toy2d", "kwargs": {"dataset": "swiss_roll", "n": 100}},
    "optim": {"lr": 1.0e-3, "warmup_steps": 3},
    "sample": {"every": -1},
    "batch_size": 16, "steps": 20, "log_every": 10, "ckpt_every": 20, "device": "cpu", "seed": 0,
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    (folder / "config.yaml").write_text(yaml.safe_dump(TEACHER))
    assert main(["train", "--config", str(folder / "config.yaml"), "--out", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


@pytest.fixture
def sampled(monkeypatch):
    """The (sampler, steps) of every run.sample call."""
    seen, real = [], LoadedRun.sample

    def spy(self, n, sampler, steps, *args, **kwargs):
        seen.append((sampler, steps))
        return real(self, n, sampler, steps, *args, **kwargs)

    monkeypatch.setattr(LoadedRun, "sample", spy)
    return seen


def test_distill_consistency_then_sample_with_the_students_sampler(teacher, tmp_path, capsys, sampled):
    out = tmp_path / "cd"
    assert main(["distill", "--teacher", str(teacher), "--method", "consistency", "--out", str(out), "--steps", "3",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"consistency student in {out} (1 round;" in printed
    assert f"sample: difflab sample --ckpt {out} --steps 1" in printed
    (rounds,) = json.loads(printed.strip().splitlines()[-1])["rounds"]
    assert rounds["steps"] == 3 and rounds["checkpoint"].endswith("step_00000003")
    run = dl.load(out)
    assert run.step == 3 and run.config.distill.method == "consistency" and run.config.distill.teacher_step == 20
    assert isinstance(run.ema_model, dl.models.ConsistencyModel)
    x_pt = tmp_path / "x.pt"
    assert main(["sample", "--ckpt", str(out), "--steps", "1", "--n", "5", "--label", "1", "--seed", "3",
                 "--save-tensor", str(x_pt), "--out", str(tmp_path / "x.png")]) == 0
    assert sampled == [("consistency", 1)]  # the run's sampler, not the CLI's old default ddim
    expected = dl.load(out).sample(5, "consistency", 1, labels=1, seed=3)
    assert torch.equal(torch.load(x_pt), expected) and expected.shape == (5, 2)
    # no --sampler, no --steps: the student's (consistency, 1); the teacher's own (ddim, its config's steps)
    for ckpt, own in ((out, ("consistency", 1)), (teacher, ("ddim", dl.load(teacher).config.sample.steps))):
        assert main(["sample", "--ckpt", str(ckpt), "--n", "2", "--save-tensor", str(x_pt), "--out",
                     str(tmp_path / "x.png")]) == 0
        assert sampled[-1] == own
    assert main(["sample", "--ckpt", str(out), "--n", "2", "--sampler", "ddim", "--steps", "2", "--save-tensor",
                 str(x_pt), "--out", str(tmp_path / "x.png")]) == 0
    assert sampled[-1] == ("ddim", 2)  # flags still win


def test_a_progressive_student_samples_its_steps_and_refuses_others(teacher, tmp_path, capsys, sampled):
    out = tmp_path / "pd"
    assert main(["distill", "--teacher", str(teacher), "--method", "progressive", "--start-steps", "8",
                 "--student-steps", "2", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"progressive student in {out} (2 rounds;" in captured.out
    assert f"sample: difflab sample --ckpt {out} --steps 2" in captured.out
    assert "round 1 of 2: 8 -> 4 steps" in captured.err and "round 2 of 2: 4 -> 2 steps" in captured.err
    assert dl.load(out / "rounds" / "004").step == 2 and dl.load(out).step == 2
    x_pt = tmp_path / "x.pt"
    assert main(["sample", "--ckpt", str(out), "--n", "3", "--label", "0", "--save-tensor", str(x_pt),
                 "--out", str(tmp_path / "x.png")]) == 0
    assert sampled == [("ddim", 2)] and torch.load(x_pt).shape == (3, 2)
    assert main(["sample", "--ckpt", str(out), "--n", "3", "--steps", "3", "--save-tensor", str(x_pt),
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "this student was distilled for 2 steps" in err and "--steps 2" in err and len(err.splitlines()) == 1


def test_train_resume_refuses_a_distilled_student(teacher, tmp_path, capsys):
    out = tmp_path / "cd"
    assert main(["distill", "--teacher", str(teacher), "--method", "consistency", "--out", str(out), "--steps", "2",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--steps", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is a distilled student (consistency distillation of" in err and "difflab distill --resume" in err
    assert len(err.splitlines()) == 1 and dl.load(out).step == 2
    # difflab distill --resume does continue it
    assert main(["distill", "--teacher", str(teacher), "--method", "consistency", "--out", str(out), "--steps", "4",
                 "--resume", "--quiet"]) == 0
    assert dl.load(out).step == 4


def test_distill_bad_flags_are_one_line_errors(teacher, tmp_path, capsys):
    out = tmp_path / "out"

    def refused(*flags):
        assert main(["distill", "--teacher", str(teacher), "--out", str(out), "--quiet", *flags]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
        return err

    assert "--steps must be a positive integer, got 0" in refused("--method", "consistency", "--steps", "0")
    assert "--start-steps must be a positive integer, got -8" in refused("--method", "progressive",
                                                                         "--start-steps", "-8")
    err = refused("--method", "consistency", "--start-steps", "8")
    assert "--start-steps and --student-steps are progressive distillation's" in err and "--steps K" in err
    assert "power of two" in refused("--method", "progressive", "--start-steps", "12", "--student-steps", "4")
    assert "nothing to resume" in refused("--method", "guided", "--resume")
    assert "holds the teacher" in refused("--method", "consistency", "--out", str(teacher))
    assert not out.exists()


def test_sample_notes_what_a_student_was_not_trained_for(teacher, tmp_path, capsys):
    """A guided student sampled at a scale outside the range it learnt, and a progressive student
    under another sampler than DDIM, sample all the same, after a note saying so."""
    guided, pd = tmp_path / "guided", tmp_path / "pd"
    assert main(["distill", "--teacher", str(teacher), "--method", "guided", "--out", str(guided), "--steps", "2",
                 "--quiet"]) == 0
    assert main(["distill", "--teacher", str(teacher), "--method", "progressive", "--start-steps", "4",
                 "--student-steps", "2", "--out", str(pd), "--steps", "2", "--quiet"]) == 0
    capsys.readouterr()

    def notes(*args):
        assert main(["sample", *args, "--n", "2", "--save-tensor", str(tmp_path / "x.pt"), "--out",
                     str(tmp_path / "x.png")]) == 0
        return [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]

    assert notes("--ckpt", str(guided), "--label", "1", "--guidance", "2") == []  # inside [1, 3]
    (note,) = notes("--ckpt", str(guided), "--label", "1", "--guidance", "5")
    assert "w in [1, 3]" in note and "--guidance 5" in note
    assert notes("--ckpt", str(pd)) == []
    (note,) = notes("--ckpt", str(pd), "--sampler", "ddpm")
    assert "deterministic DDIM steps" in note and "--sampler ddpm" in note
