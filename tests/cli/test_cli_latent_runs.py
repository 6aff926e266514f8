"""The commands on a latent diffusion run (training/latent*.py): `difflab sample` writes decoded
digits, `difflab inpaint`, `difflab img2img` and `difflab interpolate` take and write pixels (the run's autoencoder
encodes and decodes), `difflab eval` measures decoded images (and skips bits/dim, which a latent
model has only for its latents)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from latent_runs import autoencoder_run, latent_config
from PIL import Image

import difflab as dl
from difflab.cli import eval as eval_cli
from difflab.cli import main
from difflab.data.grids import save_image_grid
from difflab.training import train
from difflab.training.latent import decode_latents, encode_images
from difflab.training.noisy_classifier import load_noisy_classifier, train_noisy_classifier


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent_cli")
    train(latent_config(autoencoder_run(root / "ae"), steps=2), root / "run", progress=False)
    return root / "run"


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_sample_writes_the_decoded_digits(latent_run, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(latent_run), "--n", "3", "--label", "4", "--steps", "3", "--seed", "2",
                 "--out", str(out), "--save-tensor", str(tmp_path / "x.pt")]) == 0
    run = dl.load(latent_run)
    latents = dl.sample(run.ema_model, run.proc, (3, 2, 4, 4), "ddim", 3, cond=torch.full((3,), 4),
                        generator=torch.Generator().manual_seed(2))
    images = decode_latents(run.autoencoder, latents)
    assert torch.equal(torch.load(tmp_path / "x.pt"), images)
    assert np.array_equal(_png(out), _png(save_image_grid(images, tmp_path / "expected.png", nrow=2)))


def test_classifier_guidance_of_a_latent_run_writes_decoded_digits(latent_run, tmp_path):
    """A noise-aware classifier of the latents (trained on them: data=) guides the latent sampler; the
    samples written are decoded, as run.sample's are."""
    run = dl.load(latent_run)
    x, y = dl.data.load("digits")
    latents = encode_images(run.autoencoder, x[:64])
    train_noisy_classifier(latent_run, tmp_path / "clf", steps=2, width=8, data=(latents, y[:64]))
    assert main(["sample", "--ckpt", str(latent_run), "--n", "2", "--label", "3", "--steps", "2",
                 "--classifier", str(tmp_path / "clf"), "--classifier-scale", "2", "--out", str(tmp_path / "g.png"),
                 "--save-tensor", str(tmp_path / "x.pt")]) == 0
    clf = load_noisy_classifier(tmp_path / "clf")
    z = dl.sample(run.ema_model, run.proc, (2, 2, 4, 4), "ddim", 2, cond=torch.full((2,), 3),
                  generator=torch.Generator().manual_seed(0), classifier=clf, classifier_scale=2.0)
    assert torch.equal(torch.load(tmp_path / "x.pt"), decode_latents(run.autoencoder, z))


def test_the_editing_commands_take_and_give_pixels(latent_run, tmp_path):
    x, _ = dl.data.load("digits")
    src = tmp_path / "digit.png"
    Image.fromarray(((x[0, 0] + 1) * 127.5).round().byte().numpy()).save(src)
    filled = tmp_path / "filled.png"
    assert main(["inpaint", "--ckpt", str(latent_run), "--input", str(src), "--mask", "half:bottom", "--steps", "3",
                 "--label", "1", "--out", str(filled)]) == 0
    a, b = _png(src).astype(int), _png(filled).astype(int)
    assert a.shape == b.shape == (8, 8)
    assert np.array_equal(a[:4], b[:4])  # the kept half: the input's pixels
    edited = tmp_path / "edited.png"
    assert main(["img2img", "--ckpt", str(latent_run), "--input", str(src), "--strength", "0.4", "--steps", "5",
                 "--out", str(edited)]) == 0
    assert _png(edited).shape == (8, 8)
    strip = tmp_path / "strip.png"
    assert main(["interpolate", "--ckpt", str(latent_run), "--seeds", "1", "2", "--frames", "3", "--steps", "3",
                 "--out", str(strip)]) == 0
    assert main(["interpolate", "--ckpt", str(latent_run), "--input", str(src), str(src), "--frames", "3", "--steps",
                 "3", "--out", str(strip)]) == 0
    assert main(["interpolate", "--ckpt", str(latent_run), "--input", str(src), "--reconstruct", "--steps", "3",
                 "--out", str(strip)]) == 0


def test_eval_measures_decoded_images(latent_run, tmp_path, capsys):
    clf = tmp_path / "clf"
    assert main(["train-classifier", "--data", "digits", "--out", str(clf), "--epochs", "1", "--quiet"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--ckpt", str(latent_run), "--classifier", str(clf), "--n", "20", "--steps", "2",
                 "--floor-split", "none", "--out", str(out), "--quiet"]) == 0
    assert "no bits/dim for a latent diffusion model" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"] and all(np.isfinite(r["fid"]) for r in metrics["rows"])
    assert "bits_per_dim" not in metrics


def test_eval_checks_the_memory_of_the_decoded_images(tmp_path, monkeypatch):
    """`difflab eval` keeps --n decoded images [1, 8, 8] (twice at once, 4 bytes a value), not the
    latents [2, 4, 4]: its memory check before sampling counts the images."""
    run = tmp_path / "run"
    train(latent_config(autoencoder_run(tmp_path / "ae"), steps=2), run, progress=False)
    asked = []

    def refuse(need, device, what, fix):  # as if the machine had no memory: stop before any sampling
        asked.append(need)
        raise MemoryError(f"{what} needs {need} bytes")

    monkeypatch.setattr(eval_cli, "check_memory", refuse)
    assert main(["eval", "--ckpt", str(run), "--n", "20", "--out", str(tmp_path / "eval"), "--quiet"]) == 1
    assert asked == [2 * 20 * (1 * 8 * 8) * 4]
