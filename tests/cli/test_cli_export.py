"""`difflab export` end to end with its model card: after `difflab eval` in eval's default folder
the card holds eval's numbers; a converted run's card says where it came from; the card's name
taken by a user's file is refused (exit 2), --no-card writes none."""

import hashlib
import json
import logging
import subprocess

import pytest
import torch
import yaml

from difflab.cli import main


def _toy_run(folder, steps=6):
    """A 2D model trained by `difflab train` (eval measures it against fresh draws, no classifier)."""
    cfg = {"model": {"name": "mlp", "kwargs": {"dim": 2, "width": 32, "depth": 1}},
           "data": {"name": "toy2d", "kwargs": {"dataset": "8gaussians", "n": 500}},
           "steps": steps, "batch_size": 64, "log_every": 3, "ckpt_every": steps, "cond_drop_prob": 0.0,
           "device": "cpu", "sample": {"every": -1}}
    (folder.parent / f"{folder.name}.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(folder.parent / f"{folder.name}.yaml"), "--out", str(folder), "--quiet"]) == 0
    return folder


def test_the_card_holds_what_difflab_eval_measured(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = _toy_run(tmp_path / "run")
    assert main(["eval", "--ckpt", "run", "--n", "64", "--steps", "4", "--quiet"]) == 0  # -> eval/run/
    measured = json.loads((tmp_path / "eval" / "run" / "metrics.json").read_text())
    assert main(["export", "--ckpt", "run", "--out", "models/toy.safetensors"]) == 0
    assert "model card models/toy.md" in capsys.readouterr().out
    card = (tmp_path / "models" / "toy.md").read_text()
    (row,) = measured["rows"]
    assert (f"| ddim | 4 | 1 | {row['sliced_wasserstein']:.4g} | {row['mmd2']:.4g} | {row['precision']:.4g} | "
            f"{row['recall']:.4g} | {row['modes_covered']} of 8 |") in card
    assert "64 samples per setting (seed 0) against fresh draws of 8gaussians" in card
    assert "| classes | none (unconditional) |" in card and "difflab sample --ckpt toy.safetensors --n 16" in card
    digest = hashlib.sha256((tmp_path / "models" / "toy.safetensors").read_bytes()).hexdigest()
    assert f"{digest}  toy.safetensors" in card.splitlines()
    try:  # the card is a checksum file for sha256sum
        check = subprocess.run(["sha256sum", "-c", "toy.md"], cwd=tmp_path / "models", capture_output=True, text=True,
                               check=False)
    except FileNotFoundError:
        check = None
    if check is not None:
        assert check.returncode == 0 and "toy.safetensors: OK" in check.stdout

    # named metrics of another run: refused, nothing written; --no-card: no card
    other = _toy_run(tmp_path / "other", steps=3)
    assert main(["eval", "--ckpt", str(other), "--n", "16", "--steps", "2", "--out", "ev_other", "--quiet"]) == 0
    assert main(["export", "--ckpt", str(run), "--out", "x.safetensors", "--metrics", "ev_other"]) == 2
    assert "not this run's checkpoint" in capsys.readouterr().err and not list(tmp_path.glob("x.*"))
    assert main(["export", "--ckpt", str(run), "--out", "x.safetensors", "--no-card"]) == 0
    assert (tmp_path / "x.safetensors").exists() and not (tmp_path / "x.md").exists()


def test_a_users_file_under_the_cards_name_refuses_the_export(tmp_path, capsys):
    run = _toy_run(tmp_path / "run", steps=2)
    (tmp_path / "toy.md").write_text("# my notes\n")
    for extra in ([], ["--force"]):
        assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "toy.safetensors"), *extra]) == 2
        err = capsys.readouterr().err
        assert "is not a model card written by difflab" in err and "--no-card" in err
        assert str(tmp_path / "toy.md") in err
    assert not (tmp_path / "toy.safetensors").exists() and (tmp_path / "toy.md").read_text() == "# my notes\n"


def test_a_converted_runs_card_names_its_source(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")  # the test extra: pip install -e ".[test]"
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"))
    diffusers.DDPMPipeline(unet=net, scheduler=diffusers.DDPMScheduler(num_train_timesteps=100)).save_pretrained(
        tmp_path / "pipe")
    assert main(["convert", "--from-diffusers", str(tmp_path / "pipe"), "--out", str(tmp_path / "run")]) == 0
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "c.safetensors")]) == 0
    card = (tmp_path / "c.md").read_text()
    assert f"from the diffusers UNet2DModel at `{(tmp_path / 'pipe').resolve()}` (scheduler DDPMScheduler)" in card
    assert "| training | none in difflab: converted weights (see Provenance) |" in card
    assert f"| parameters | {sum(p.numel() for p in net.parameters()):,} |" in card
    assert "| image shape | 1 × 8 × 8 |" in card and "--n 16 --out samples.png" in card
