"""Bad input to training is refused up front with a message naming the field, flag or argument:
sampling steps against T, model kwargs of the wrong type, the Trainer's ``data=``, a dataset that
changed under a resumed run, a directory given as the config file.

Every run here is a tiny MLP (2 steps, one thread): the whole file takes a few seconds.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import difflab as dl
from difflab.cli import main
from difflab.models import UNet
from difflab.training import Trainer, TrainConfig, apply_overrides, load_config, save_config
from difflab.training.build import build_model


def tiny(*overrides: str, **fields) -> TrainConfig:
    d = {
        "model": {"name": "mlp", "kwargs": {"dim": 2, "width": 16, "depth": 1, "num_classes": 2}},
        "diffusion": {"schedule": "linear", "T": 100},
        "data": {"name": "toy2d", "kwargs": {"dataset": "swiss_roll", "n": 64}},
        "sample": {"every": -1},
        "batch_size": 8, "steps": 2, "log_every": 1, "ckpt_every": 2, "device": "cpu", "cpu_threads": 1,
        "tensorboard": False,
    }
    d.update(fields)
    return apply_overrides(TrainConfig.from_dict(d), list(overrides))


# ------------------------------------------------------------------ 1. sample.steps vs diffusion.T
@pytest.mark.parametrize("sets, steps, T", [
    (["sample.every=0", "sample.steps=5000"], 5000, 100),
    (["sample.every=0", "diffusion.T=20"], 50, 20),  # the default sample.steps = 50
    (["sample.every=1", "sample.sampler=ddpm", "sample.steps=101"], 101, 100),
])
def test_sample_steps_on_the_training_grid_must_not_exceed_T(sets, steps, T):
    with pytest.raises(ValueError, match=rf"'sample\.steps': got {steps}.*1 \.\. diffusion\.T = {T}"):
        tiny(*sets)
    tiny(*sets[:-1], f"sample.steps={T}")  # T steps is the most a grid spacing has


def test_sample_steps_any_number_for_continuous_spacings_or_when_never_sampling():
    assert tiny("sample.every=0", "sample.sampler=dpmpp_2m", "sample.steps=5000").sample.steps == 5000
    assert tiny("sample.every=0", "sample.sampler=heun", "diffusion.T=20").sample.steps == 50
    assert tiny("sample.every=-1", "diffusion.T=20").diffusion.T == 20  # the field is unused


def test_cli_train_refuses_sample_steps_before_training(tmp_path, capsys):
    save_config(tiny(), tmp_path / "c.yaml")
    run = tmp_path / "run"
    rc = main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(run), "--quiet",
               "--set", "diffusion.T=20", "--set", "sample.every=0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'sample.steps'" in err and "diffusion.T = 20" in err
    assert not run.exists()  # nothing was trained


@pytest.mark.parametrize("flag, value, name", [("--ddpm-steps", "0", "ddpm_steps"),
                                               ("--ddim-steps", "5000", "ddim_steps")])
def test_demo_checks_sampler_steps_before_training(tmp_path, capsys, flag, value, name):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-steps", "1", "--n", "4", flag, value, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{name} ({flag})" in err and "1 .. 1000" in err and f"got {value}" in err
    assert not out.exists()  # refused before training


# ------------------------------------------------------------------ 2. model.kwargs
@pytest.mark.parametrize("kwarg", ["width=128.0", "width=abc", "dim=null"])
def test_mlp_kwargs_of_the_wrong_type_name_model_kwargs(kwarg, tmp_path):
    cfg = tiny(f"model.kwargs.{kwarg}")
    with pytest.raises(ValueError, match=r"'model\.kwargs': model 'mlp' cannot be built") as err:
        Trainer(cfg, tmp_path, progress=False)
    assert kwarg.split("=")[0] in str(err.value)


@pytest.mark.parametrize("kwargs, name", [
    ({"attention_levels": 5}, "attention_levels"),
    ({"norm_groups": 0}, "norm_groups"),
    ({"channel_mult": 2}, "channel_mult"),
    ({"channel_mult": "12"}, "channel_mult"),
    ({"num_res_blocks": "2"}, "num_res_blocks"),
    ({"attention_resolutions": 4, "image_size": 8}, "attention_resolutions"),
    ({"dropout": "0.1"}, "dropout"),
    ({"use_scale_shift_norm": "yes"}, "use_scale_shift_norm"),
    ({"num_classes": 0}, "num_classes"),
    ({"emb_dim": 0}, "emb_dim"),
])
def test_unet_checks_its_arguments(kwargs, name):
    small = dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4)
    with pytest.raises(ValueError, match=name):
        UNet(**{**small, **kwargs})


def test_unet_kwargs_from_a_config_name_the_field():
    cfg = TrainConfig.from_dict({"model": {"name": "unet_tiny", "kwargs": {"norm_groups": 0}}})
    with pytest.raises(ValueError, match=r"'model\.kwargs': model 'unet_tiny'.*norm_groups must be a positive"):
        build_model(cfg)


# ------------------------------------------------------------------ 3. Trainer(data=...)
def _xy(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("case, message", [
    ("short labels", r"labels must have shape \[N\] = \[32\].*got \(10,\)"),
    ("float labels", r"labels must be integers.*float32"),
    ("labels out of range", r"labels lie in \[0, 5\].*num_classes = 2"),
    ("nan images", r"1 NaN/inf values \(the first in sample 3\)"),
    ("integer images", r"float tensor.*torch\.int64"),
    ("no pair", r"must be a pair \(images, labels or None\)"),
])
def test_trainer_data_is_checked_up_front(case, message, tmp_path):
    x, y = _xy()
    data = {
        "short labels": (x, y[:10]),
        "float labels": (x, y.float()),
        "labels out of range": (x, torch.where(y == 1, 5, y)),
        "nan images": (x.index_put((torch.tensor([3]), torch.tensor([0])), torch.tensor(float("nan"))), y),
        "integer images": (x.long(), y),
        "no pair": x,
    }[case]
    with pytest.raises(ValueError, match=message) as err:
        Trainer(tiny(), tmp_path, data=data, progress=False)
    assert "Trainer argument 'data'" in str(err.value)


def test_trainer_data_takes_numpy_arrays_like_tensors(tmp_path):
    x, y = _xy()
    a = Trainer(tiny(), tmp_path / "a", data=(x, y), progress=False)
    a.train()
    b = Trainer(tiny(), tmp_path / "b", data=(x.double().numpy(), y.numpy()), progress=False)
    b.train()
    assert b.x.dtype == torch.float32 and b.y.dtype == torch.long
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


# ------------------------------------------------------------------ 4. resume on changed data
def _write_images(folder, n, start=0):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8), "L").save(folder / f"{i}.png")


def test_resume_refuses_a_dataset_that_changed_size(tmp_path):
    images = tmp_path / "images"
    _write_images(images, 6)
    cfg = tiny(model={"name": "mlp", "kwargs": {"dim": 16, "width": 16, "depth": 1}},
               data={"name": "folder", "kwargs": {"path": str(images)}, "flatten": True}, batch_size=4)
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False).train()
    longer = apply_overrides(cfg, ["steps=4"])

    _write_images(images, 1, start=6)  # 6 images -> 7
    with pytest.raises(ValueError, match=r"had 6 samples when the checkpoint was written and has 7 now"):
        Trainer(longer, run, resume=True, progress=False)
    (images / "6.png").unlink()
    (images / "0.png").unlink()  # 5
    with pytest.raises(ValueError, match=r"had 6 samples .* has 5 now"):
        Trainer(longer, run, resume=True, progress=False)
    _write_images(images, 1)  # back to the 6 images it had: resumes
    assert Trainer(longer, run, resume=True, progress=False).train()["step"] == 4


def test_resume_refuses_data_given_directly_that_changed(tmp_path):
    x, y = _xy()
    Trainer(tiny(), tmp_path, data=(x, y), progress=False).train()
    with pytest.raises(ValueError, match=r"\(given as the Trainer argument 'data'\) had 32 samples .* 31 now"):
        Trainer(tiny(steps=4), tmp_path, data=(x[1:], y[1:]), resume=True, progress=False)


# ------------------------------------------------------------------ 5. --config DIR
def test_a_directory_as_config_file_is_named_as_such(tmp_path, capsys):
    save_config(tiny(), tmp_path / "a.yaml")
    with pytest.raises(ValueError, match=r"is a directory \(it holds a\.yaml\); give a YAML or JSON config file"):
        load_config(tmp_path)
    assert main(["train", "--config", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "does not exist" not in err
    assert str(tmp_path) in err


@pytest.mark.parametrize("kwargs, match", [
    ({"noise": "x"}, "noise must be a finite number >= 0"),
    ({"noise": float("nan")}, "noise must be a finite number >= 0"),
    ({"bogus": 1}, "has no option 'bogus'; its options: noise"),
    ({"seed": "abc"}, r"data.kwargs.seed\): an integer"),
    ({"dataset": "checkerboard", "squares": 3}, "squares must be an even integer >= 2"),
    ({"dataset": "checkerboard", "squares": 1}, "squares must be an even integer >= 2"),
])
def test_toy2d_kwargs_are_checked_and_named(kwargs, match):
    """toy2d's options went to the makers unchecked: torch's index and random_ errors, an
    unexpected keyword, or (an odd checkerboard) dark squares of the last column never drawn."""
    from difflab.training.config import DataConfig
    from difflab.training.data import load_data

    with pytest.raises(ValueError, match=match) as info:
        load_data(DataConfig("toy2d", {"n": 50, **kwargs}))
    assert "config field data.kwargs" in str(info.value)


def test_model_timesteps_and_heads_where_attention_is():
    """The MLP broadcast a t of shape [1] to every sample (and gave torch's size error for [2]);
    the U-Net required num_heads to divide widths that have no attention."""
    net = dl.models.MLPDenoiser(dim=2, width=16, depth=1)
    for t in (torch.tensor([5]), torch.tensor([5, 6])):
        with pytest.raises(ValueError, match=r"t must be a tensor of shape \[B\] = \[4\]"):
            net(torch.zeros(4, 2), t)
    assert net(torch.zeros(4, 2), 5).shape == (4, 2)  # a number is every sample's t
    unet = dl.models.UNet(in_channels=1, channels=16, channel_mult=(1, 2), num_heads=3, mid_attention=False,
                          attention_levels=(), norm_groups=4, image_size=8)
    assert unet(torch.zeros(1, 1, 8, 8), torch.tensor([3])).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="num_heads=3 must divide every attention width"):
        dl.models.UNet(in_channels=1, channels=16, channel_mult=(1, 2), num_heads=3, norm_groups=4, image_size=8)


def test_config_flags_are_booleans_and_save_config_is_atomic(tmp_path, monkeypatch):
    """optim.fused: 1 and tensorboard: 0 passed as booleans (1 == True); save_config wrote in place."""
    from difflab.training import TrainConfig, config as config_module

    base = TrainConfig.from_dict({"model": {"name": "mlp", "kwargs": {"dim": 2}}, "data": {"name": "toy2d"}})
    for bad, field in (({"optim": {"fused": 1}}, "optim.fused"), ({"tensorboard": 0}, "tensorboard")):
        with pytest.raises(ValueError, match=field):
            TrainConfig.from_dict({**base.to_dict(), **bad})
    writes = []
    monkeypatch.setattr(config_module, "atomic_write_text", lambda path, text: writes.append(path))
    config_module.save_config(base, tmp_path / "c.yaml")
    assert writes == [tmp_path / "c.yaml"]
