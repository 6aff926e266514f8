"""``difflab train-classifier --noisy`` and ``difflab sample --classifier``: a run's noise-aware
classifier trained from the command line, resumed by the same command, used for classifier guidance
of the unconditional run (a row per class), and every refusal named with its flag before any work."""

import pytest
import torch

from difflab.cli import main
from difflab.training.noisy_classifier import RESUME_FILE, WEIGHTS_FILE
from scripts import REPO


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """configs/digits_uncond.yaml and configs/digits.yaml, narrowed, two steps each."""
    root = tmp_path_factory.mktemp("cli_noisy")
    for name in ("digits_uncond", "digits"):
        assert main(["train", "--config", str(REPO / "configs" / f"{name}.yaml"), "--out", str(root / name),
                     "--steps", "2", "--batch-size", "16", "--ckpt-every", "2", "--sample-every", "-1", "--quiet",
                     "--set", "model.kwargs.width=32"]) == 0
    return root


@pytest.fixture(scope="module")
def noisy(runs):
    out = runs / "noisy"
    assert main(["train-classifier", "--noisy", "--ckpt", str(runs / "digits_uncond"), "--out", str(out),
                 "--steps", "4", "--ckpt-every", "2", "--width", "16", "--depth", "1", "--quiet"]) == 0
    return out


@pytest.fixture
def err(capsys):
    def run(argv):
        assert main([str(a) for a in argv]) == 2
        return capsys.readouterr().err
    return run


def test_train_resume_and_guide(runs, noisy, tmp_path, capsys):
    assert (noisy / WEIGHTS_FILE).is_file() and (noisy / RESUME_FILE).is_file()
    capsys.readouterr()
    assert main(["train-classifier", "--noisy", "--ckpt", str(runs / "digits_uncond"), "--out", str(noisy),
                 "--steps", "6", "--ckpt-every", "2", "--width", "16", "--depth", "1", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "resuming" in said and "step 6" in said and '"held_out_accuracy"' in said
    grid, tensor = tmp_path / "g.png", tmp_path / "x.pt"
    assert main(["sample", "--ckpt", str(runs / "digits_uncond"), "--classifier", str(noisy), "--classifier-scale", "3",
                 "--label", "all", "--n", "2", "--steps", "3", "--out", str(grid), "--save-tensor", str(tensor)]) == 0
    x = torch.load(tensor)
    assert x.shape == (20, 1, 8, 8) and grid.stat().st_size > 0
    # the same classifier guides the conditional run (same process, same classes) beside its own guidance
    assert main(["sample", "--ckpt", str(runs / "digits"), "--classifier", str(noisy), "--label", "4",
                 "--guidance", "2", "--n", "3", "--steps", "2", "--out", str(grid)]) == 0
    # classifier scale 0 is plain sampling: the same samples as without the classifier (conditional run)
    plain, zero = tmp_path / "p.pt", tmp_path / "z.pt"
    base = ["sample", "--ckpt", str(runs / "digits"), "--label", "4", "--n", "3", "--steps", "2", "--out", str(grid)]
    assert main(base + ["--save-tensor", str(plain)]) == 0
    assert main(base + ["--classifier", str(noisy), "--classifier-scale", "0", "--save-tensor", str(zero)]) == 0
    assert torch.equal(torch.load(plain), torch.load(zero))


def test_refusals(runs, noisy, tmp_path, err):
    uncond = runs / "digits_uncond"
    assert "add --noisy" in err(["train-classifier", "--ckpt", uncond, "--out", tmp_path / "c"])
    assert "--noisy needs --ckpt" in err(["train-classifier", "--noisy", "--out", tmp_path / "c"])
    assert "--noisy needs --out" in err(["train-classifier", "--noisy", "--ckpt", uncond])
    assert "--limit choose the evaluation" in err(["train-classifier", "--noisy", "--ckpt", uncond, "--out",
                                                   tmp_path / "c", "--limit", 5])
    assert "other settings" in err(["train-classifier", "--noisy", "--ckpt", uncond, "--out", noisy, "--width", "8",
                                    "--steps", "8", "--quiet"])
    sample = ["sample", "--ckpt", uncond, "--out", tmp_path / "s.png", "--steps", "2", "--n", "2"]
    assert "--classifier-scale needs --classifier" in err(sample + ["--classifier-scale", "2", "--label", "1"])
    assert "add --label" in err(sample + ["--classifier", noisy])
    assert "--label must be a class index 0..9" in err(sample + ["--classifier", noisy, "--label", "10"])
    assert "--classifier-scale must be a finite number >= 0" in err(sample + ["--classifier", noisy, "--label", "1",
                                                                              "--classifier-scale", "-1"])
    assert "needs a class-conditional model" in err(sample + ["--classifier", noisy, "--label", "1", "--guidance", "3"])
    assert "no noisy classifier" in err(sample + ["--classifier", tmp_path, "--label", "1"])
    assert "--label needs a class-conditional model or --classifier" in err(sample + ["--label", "1"])
    # a run of another schedule: the classifier's noise levels would mean other ones
    other = tmp_path / "other"
    assert main(["train", "--config", str(REPO / "configs" / "digits_uncond.yaml"), "--out", str(other), "--steps", "1",
                 "--batch-size", "8", "--ckpt-every", "1", "--sample-every", "-1", "--quiet",
                 "--set", "model.kwargs.width=16", "--set", "diffusion.schedule=linear"]) == 0
    assert "another process" in err(["sample", "--ckpt", other, "--classifier", noisy, "--label", "1", "--out",
                                     tmp_path / "s.png"])
