"""Training a run's noise-aware classifier (difflab.training.noisy_classifier): it learns the run's
classes from the run's noisy states, resumes exactly where it stopped, never loses a saved
classifier, loads with what guidance checks (shape, classes, the process), and refuses what it cannot do."""

import pytest
import torch
from tiny_config import tiny

import difflab as dl
from difflab.training import Trainer
from difflab.training.noisy_classifier import (RESUME_FILE, WEIGHTS_FILE, load_noisy_classifier, noisy_accuracy,
                                               train_noisy_classifier)

SMALL = dict(width=32, depth=1, batch_size=64, lr=3e-3, warmup=5)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An unconditional MLP on eight_gaussians (8 labelled modes), a few steps: the classifier needs
    the run's config, process and data, not a good diffusion model."""
    out = tmp_path_factory.mktemp("ncl") / "run"
    cfg = tiny(**{"model.kwargs.num_classes": None, "data.kwargs.dataset": "8gaussians", "data.kwargs.n": 800,
                  "cond_drop_prob": 0.0, "steps": 2, "ckpt_every": 2})
    Trainer(cfg, out, progress=False).train()
    return out


def test_learns_the_classes_of_the_noisy_states(run, tmp_path):
    """Nearly every held-out point is classified right at low noise, chance-like at the top, as the
    classes of eight_gaussians stay apart until the noise covers their spacing."""
    info = train_noisy_classifier(run, tmp_path / "c", steps=300, ckpt_every=300, **SMALL)
    assert info["num_classes"] == 8 and info["data_shape"] == [2] and info["step"] == 300
    acc = list(info["held_out_accuracy"].values())
    assert acc[0] > 0.9 and acc[-1] < 0.4, info["held_out_accuracy"]
    clf = load_noisy_classifier(tmp_path / "c")
    loaded = dl.load(run)
    assert clf.process_signature == loaded.proc.network_signature() and clf.num_classes == 8
    assert not clf.training and clf.data_shape == (2,)
    # the loaded classifier is the trained one: the same held-out accuracies from its file
    x, y = dl.data.toy2d.make("8gaussians", 800, torch.Generator().manual_seed(0), labels=True)
    again = noisy_accuracy(clf, loaded.proc, x[:200], y[:200], [0.05])
    assert again["0.05"] > 0.9
    # and it guides the run's model through dl.sample (every sampler: tests/samplers/test_classifier_guidance.py)
    out = dl.sample(loaded.ema_model, loaded.proc, (16, 2), steps=5, cond=3, classifier=clf, classifier_scale=2.0)
    assert out.shape == (16, 2) and torch.isfinite(out).all()


def test_an_interrupted_run_resumes_to_the_same_weights(run, tmp_path):
    """10 steps then 10 more equal 20 steps at once, bit for bit: the batches and draws of a step
    depend on (seed, step) alone, and the optimizer and learning rate come back from resume.pt."""
    whole = train_noisy_classifier(run, tmp_path / "whole", steps=20, ckpt_every=10, **SMALL)
    train_noisy_classifier(run, tmp_path / "parts", steps=10, ckpt_every=10, **SMALL)
    said = []
    parts = train_noisy_classifier(run, tmp_path / "parts", steps=20, ckpt_every=10, log=said.append, **SMALL)
    assert any("resuming" in s and "step 10" in s for s in said)
    assert whole["step"] == parts["step"] == 20
    a, b = load_noisy_classifier(tmp_path / "whole"), load_noisy_classifier(tmp_path / "parts")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    # nothing more to do at the step reached: the saved classifier is returned untouched
    assert train_noisy_classifier(run, tmp_path / "parts", steps=20, **SMALL)["step"] == 20


def test_refusals_name_the_problem(run, tmp_path):
    train_noisy_classifier(run, tmp_path / "c", steps=2, ckpt_every=2, **SMALL)
    with pytest.raises(ValueError, match=r"other settings: lr \(saved 0.003, now 0.01\)"):
        train_noisy_classifier(run, tmp_path / "c", steps=4, **dict(SMALL, lr=1e-2))
    (tmp_path / "c" / RESUME_FILE).unlink()  # a classifier without its resume file is kept, not overwritten
    with pytest.raises(ValueError, match="no resume.pt"):
        train_noisy_classifier(run, tmp_path / "c", steps=4, **SMALL)
    with pytest.raises(ValueError, match="no labels"):
        train_noisy_classifier(run, tmp_path / "d", steps=2, data=(torch.zeros(10, 2), None))
    with pytest.raises(ValueError, match="holdout must be a share"):
        train_noisy_classifier(run, tmp_path / "d", holdout=1.5)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        train_noisy_classifier(run, tmp_path / "d", steps=0)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        train_noisy_classifier(run, tmp_path / "f", steps=2)
    with pytest.raises(FileNotFoundError, match="no noisy classifier"):
        load_noisy_classifier(tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / RESUME_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is damaged"):
        train_noisy_classifier(run, tmp_path / "e", steps=2)
    (tmp_path / "e" / WEIGHTS_FILE).write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="is damaged"):
        load_noisy_classifier(tmp_path / "e")


def test_a_classifier_of_another_process_is_refused_by_guidance(run, tmp_path):
    """The loaded classifier's process_signature comes back from its file: sampling another
    schedule's model with it is refused before any step."""
    train_noisy_classifier(run, tmp_path / "c", steps=2, ckpt_every=2, **SMALL)
    clf = load_noisy_classifier(tmp_path / "c")
    other = dl.GaussianDiffusion(dl.schedules.cosine(100))
    model = dl.models.MLPDenoiser(dim=2, width=8, depth=1)
    with pytest.raises(ValueError, match="another process"):
        dl.sample(model, other, (4, 2), steps=2, cond=1, classifier=clf)


def test_an_image_run_gets_the_convolutional_classifier(tmp_path):
    """A run on 8x8 digit images (unet_tiny, data not flattened): the classifier is the U-Net
    encoder with attention pooling on [B, 1, 8, 8], recorded with that shape, and guides the run."""
    cfg = tiny(**{"model.name": "unet_tiny", "model.kwargs": {}, "data.name": "digits", "data.kwargs": {},
                  "cond_drop_prob": 0.0, "steps": 1, "ckpt_every": 1, "batch_size": 8})
    Trainer(cfg, tmp_path / "run", progress=False).train()
    info = train_noisy_classifier(tmp_path / "run", tmp_path / "c", steps=2, ckpt_every=2, batch_size=8, width=8,
                                  depth=1, holdout=0.05)
    assert info["data_shape"] == [1, 8, 8] and info["num_classes"] == 10
    clf = load_noisy_classifier(tmp_path / "c")
    assert isinstance(clf.pool, dl.models.AttentionPool)
    run = dl.load(tmp_path / "run")
    x = dl.sample(run.ema_model, run.proc, (3, 1, 8, 8), steps=2, cond=torch.tensor([1, 2, 3]), classifier=clf,
                  classifier_scale=2.0)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match=r"trained on data of shape \(1, 8, 8\) but the samples have shape \(64,\)"):
        dl.sample(run.ema_model, run.proc, (3, 64), steps=2, cond=1, classifier=clf)
