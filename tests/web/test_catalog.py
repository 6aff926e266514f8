"""The served models: ids the server assigns (unique, from the run's name), what the page is told
about each (no server path), and runs the page cannot show refused when the server starts."""

import json

import pytest
from difflab.training.config import TrainConfig
from difflab.training.trainer import Trainer
from difflab.web import Catalog, model_id


def test_ids_come_from_the_run_names_and_are_unique(digits_run_dir):
    ck = next((digits_run_dir / "checkpoints").glob("step_*"))
    cat = Catalog([digits_run_dir, ck, str(digits_run_dir) + "/"])
    assert cat.ids() == ["digits", "digits-2", "digits-3"]  # a checkpoint folder is named after its run
    assert model_id("runs/My Run (v2)") == "my-run-v2"
    assert model_id("exports/digits.safetensors") == "digits" and model_id("runs/digits/checkpoints") == "digits"
    assert model_id("///") == "model"
    (d,) = Catalog([digits_run_dir]).describe()
    assert d == {"id": "digits", "kind": "image", "frames": None, "classes": 10, "prompt": False, "channels": 1, "height": 8, "width": 8,
                 "samplers": ["consistency", "ddim", "ddpm", "dpmpp_2m", "dpmpp_3m", "euler", "euler_maruyama",
                              "heun", "pc"],
                 "inpaint_samplers": ["ddpm", "ddim", "euler", "heun"], "sampler": "ddim", "steps": 50,
                 "discrete_steps": 100, "step": 400}
    assert str(digits_run_dir) not in json.dumps(d) and "/" not in json.dumps(d)  # no path on the server


def test_a_run_of_vectors_or_no_run_is_refused(tmp_path):
    out = tmp_path / "toy"
    cfg = TrainConfig.from_dict({
        "model": {"name": "mlp", "kwargs": {"dim": 2, "width": 16, "depth": 1}}, "diffusion": {"T": 10},
        "data": {"name": "toy2d", "kwargs": {"n": 32}}, "sample": {"every": -1}, "batch_size": 8, "steps": 2,
        "ckpt_every": 2, "device": "cpu", "tensorboard": False})
    Trainer(cfg, out, progress=False).train()
    with pytest.raises(ValueError, match=r"makes samples of shape \(2,\), neither images \[C, H, W\] nor clips"):
        Catalog([out])
    with pytest.raises(ValueError, match="no model to serve: pass --ckpt RUN"):
        Catalog([])


def test_a_video_run_is_a_clip_model(clip_run_dir):
    (d,) = Catalog([clip_run_dir]).describe()
    assert (d["id"], d["kind"], d["frames"], d["channels"], d["height"], d["width"], d["classes"]) == \
        ("moving", "clip", 8, 1, 16, 16, 10)
