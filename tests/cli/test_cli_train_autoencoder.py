"""`difflab train-autoencoder` end to end at tiny sizes, with the shipped configs/mnist_vae.yaml on
the MNIST-like fixture folder; the perceptual term with a difflab classifier's features."""

from pathlib import Path

import torch

import difflab as dl
from difflab.cli import main
from difflab.evaluation.classifier import SmallCNN, save_classifier

REPO = Path(__file__).resolve().parents[2]  # tests/cli/ -> the repository root


def test_train_resume_and_load_with_the_mnist_vae_config(tmp_path, capsys, mnist_dir):
    run = tmp_path / "vae"
    clf = save_classifier(SmallCNN(), tmp_path / "clf")  # (untrained: its features still define a loss)
    args = ["--set", f"data.kwargs.root={mnist_dir}", "--set", "batch_size=8", "--set", "ema.decay=0", "--log-every", "1", "--quiet",
            "--set", "autoencoder.perceptual_weight=0.1", "--set", f"autoencoder.perceptual_classifier={clf}"]
    assert main(["train-autoencoder", "--config", str(REPO / "configs" / "mnist_vae.yaml"), "--out", str(run),
                 "--steps", "2", "--ckpt-every", "2", *args]) == 0
    printed = capsys.readouterr().out
    assert "latent scale factor" in printed and (run / "samples" / "step_00000002.png").is_file()
    assert main(["train-autoencoder", "--out", str(run), "--resume", "--steps", "3", "--quiet"]) == 0
    loaded = dl.load(run)
    assert loaded.step == 3 and loaded.config.autoencoder.perceptual_weight == 0.1
    x, _ = dl.data.load("mnist", root=mnist_dir, split="t10k")
    assert loaded.ema_model.encode_latents(x[:4], generator=torch.Generator().manual_seed(0)).shape == (4, 4, 7, 7)


def test_a_diffusion_config_is_refused_with_the_command_to_use(tmp_path, capsys):
    rc = main(["train-autoencoder", "--config", str(REPO / "configs" / "digits.yaml"), "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "loss: autoencoder" in capsys.readouterr().err
