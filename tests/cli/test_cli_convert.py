"""`difflab convert` end to end: a diffusers folder in, a run every command takes, a pipeline out;
refusals are one line, exit 2, naming the option."""

import json
import logging

import pytest
import torch

import difflab as dl
from difflab.cli import main
from difflab.evaluation.classifier import SmallCNN, save_classifier

diffusers = pytest.importorskip("diffusers")  # the test extra: pip install -e ".[test]"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
logging.getLogger("diffusers").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A random class-conditional UNet2DModel for 8x8 grayscale images with its DDIMScheduler."""
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=4, num_class_embeds=10,
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    folder = tmp_path_factory.mktemp("convert") / "pipe"
    diffusers.DDPMPipeline(unet=net, scheduler=diffusers.DDIMScheduler(num_train_timesteps=100)).save_pretrained(folder)
    return folder


def test_convert_then_sample_edit_evaluate_and_back(pipeline, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["convert", "--from-diffusers", str(pipeline), "--out", str(run), "--set", "data.name=digits"]) == 0
    said = capsys.readouterr().out
    assert "DDIMScheduler" in said and "note: the model has 10 class labels and no 'no label' class" in said
    # the scheduler's sampling as difflab's options (diffusers' defaults: leading timesteps, clipped DDIM)
    assert "note: timestep_spacing 'leading'" in said and "pass spacing='leading' to dl.sample" in said
    assert "note: clip_sample true with DDIM" in said and "use_clipped_model_output=True" in said
    assert main(["sample", "--ckpt", str(run), "--n", "4", "--steps", "3", "--label", "3",
                 "--out", str(tmp_path / "grid.png")]) == 0
    dl.editing.save_images(dl.data.load("digits")[0][:1], tmp_path / "digit.png")
    assert main(["inpaint", "--ckpt", str(run), "--input", str(tmp_path / "digit.png"), "--mask", "half:bottom",
                 "--steps", "3", "--label", "3", "--out", str(tmp_path / "filled.png")]) == 0
    save_classifier(SmallCNN(), tmp_path / "clf", {"dataset": "digits", "train_split": "none", "test_split": "none",
                                                   "test_accuracy": 0.0})  # untrained: eval's features, any will do
    assert main(["eval", "--ckpt", str(run), "--classifier", str(tmp_path / "clf"), "--n", "20", "--steps", "2",
                 "--bpd-n", "4", "--bpd-timesteps", "2", "--floor-split", "none", "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["rows"][0]["n"] == 20 and "fid" in metrics["rows"][0] and metrics["bits_per_dim"]["n"] == 4
    assert main(["convert", "--to-diffusers", str(run), "--out", str(tmp_path / "back")]) == 0
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "back")
    assert pipe.unet.config.num_class_embeds == 11  # the 10 labels and difflab's null label
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([7, 93])
    with torch.no_grad():
        assert (pipe.unet(x, t, class_labels=torch.tensor([1, 8])).sample
                - dl.load(run).ema_model(x, t, torch.tensor([1, 8]))).abs().max() < 1e-5


def test_convert_refusals(pipeline, tmp_path, capsys):
    def error(argv):
        assert main(["convert", *argv]) == 2
        return capsys.readouterr().err

    assert "exists; name a new folder" in error(["--from-diffusers", str(pipeline), "--out", str(pipeline)])
    (tmp_path / "empty").mkdir()
    assert "is not a diffusers UNet2DModel folder" in error(["--from-diffusers", str(tmp_path / "empty"),
                                                              "--out", str(tmp_path / "run")])
    config = json.loads((pipeline / "unet" / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    crossattn = ["CrossAttnDownBlock2D", "AttnDownBlock2D"]
    (bad / "config.json").write_text(json.dumps({**config, "down_block_types": crossattn}))
    message = error(["--from-diffusers", str(bad), "--out", str(tmp_path / "run"),
                     "--scheduler", str(pipeline / "scheduler")])
    assert "down_block_types[0] = 'CrossAttnDownBlock2D'" in message and "cross-attention" in message
    assert "no scheduler config" in error(["--from-diffusers", str(bad), "--out", str(tmp_path / "run")])
    scheduler = json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text())
    (bad / "scheduler_config.json").write_text(json.dumps({**scheduler, "prediction_type": "flow"}))
    (bad / "config.json").write_text(json.dumps(config))
    assert "prediction_type = 'flow'" in error(["--from-diffusers", str(bad), "--out", str(tmp_path / "run")])
    assert "--scheduler apply to --from-diffusers" in error(["--to-diffusers", str(tmp_path), "--out",
                                                             str(tmp_path / "p"), "--scheduler", "x.json"])
    assert not (tmp_path / "run").exists()
