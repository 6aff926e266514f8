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


def test_a_continuous_process_samples_any_number_of_steps_with_a_grid_sampler(tmp_path):
    """A sampler whose default spacing lies on the DDPM grid (ddpm, ddim) takes a continuous
    process's own noise levels (samplers.timesteps.default_spacing): no bound by diffusion.T,
    whose value such a process requires at the default anyway."""
    sets = ("diffusion.process=flow", "diffusion.T=1000", "sample.every=0", "sample.sampler=ddpm")
    assert tiny(*sets, "sample.steps=5000").sample.steps == 5000
    with pytest.raises(ValueError, match=r"'diffusion\.T': got 20; the noise schedule applies to process 'ddpm' only"):
        tiny(*sets[:1], "diffusion.T=20")


def test_cli_train_refuses_a_process_option_out_of_range_before_training(tmp_path, capsys):
    save_config(tiny(), tmp_path / "c.yaml")
    run = tmp_path / "run"
    rc = main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(run), "--quiet",
               "--set", "diffusion.process=edm", "--set", "diffusion.T=1000",
               "--set", "diffusion.process_kwargs.sigma_max=-80"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "config field 'diffusion.process_kwargs'" in err and "sigma_max must be a finite number > 0" in err
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


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 10, "patch_size": 4}, r"'model\.kwargs': model 'dit'.*image_size=10 is not divisible by patch_size=4"),
    ({"context_dim": 16}, r"'model\.kwargs\.context_dim'.*has no text encoder.*text_unet or text_dit"),
    ({"learn_sigma": True}, r"'model\.kwargs\.learn_sigma'.*variance output would stay untrained.*loss: hybrid"),
])
def test_dit_kwargs_that_do_not_fit_the_data_or_the_losses_name_the_field(kwargs, message):
    dit = {"in_channels": 1, "image_size": 8, "hidden_size": 32, "depth": 1, "num_heads": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_model(TrainConfig.from_dict({"model": {"name": "dit", "kwargs": dit}, "data": {"name": "digits"}}))


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


def _images(lo, hi, n=8):
    """n 1x8x8 images whose values run evenly from lo to hi (both reached)."""
    return torch.linspace(lo, hi, n * 64).reshape(n, 1, 8, 8)


def _image_cfg(*overrides):
    """A run on images: the config names the image data set 'digits' (not loaded: data= replaces it)."""
    return tiny(*overrides, model={"name": "unet_tiny", "kwargs": {}}, data={"name": "digits"})


def test_0_255_pixels_given_as_data_are_refused_as_data_not_blamed_on_the_model(tmp_path):
    """The scale is checked with the data, before the model is tried: the message names the data's
    source (not the config's data set, not the model) and the fix, not model.kwargs."""
    with pytest.raises(ValueError) as err:
        Trainer(_image_cfg(), tmp_path, data=(_images(0, 255), None), progress=False)
    msg = str(err.value)
    assert msg.startswith("Trainer argument 'data': the images must be scaled to [-1, 1]")
    assert "[0, 255]" in msg and "x / 127.5 - 1" in msg
    assert "unet_tiny" not in msg and "model.kwargs" not in msg and "digits" not in msg
    # a model that does not fit the data given: named as given, not as the config's data set
    with pytest.raises(ValueError, match=r"model 'unet_tiny' cannot take the data given to Trainer\(data=\.\.\.\) "
                                         r"of shape \(1, 9, 9\)") as err:
        Trainer(_image_cfg(), tmp_path, data=(torch.zeros(8, 1, 9, 9), None), progress=False)
    assert "digits" not in str(err.value)


def test_data_beyond_the_sampling_clip_range_is_refused_with_the_range_and_the_fix(tmp_path):
    """The clip range comes from the config (data set 'digits': [-1, 1]); data in [-3, 3] given
    directly would be sampled clamped to [-1, 1] without a word: refused, naming the range found."""
    with pytest.raises(ValueError) as err:
        Trainer(_image_cfg(), tmp_path / "a", data=(_images(-3, 3), None), progress=False)
    msg = str(err.value)
    assert msg.startswith("the data given to Trainer(data=...) lies in [-3, 3], beyond the range |x0| <= 1")
    assert "set sample.clip_x0: 3 in the config" in msg and "\n" not in msg
    # the fix works: the run's samplers then clip to [-3, 3]
    assert Trainer(_image_cfg("sample.clip_x0=3"), tmp_path / "b", data=(_images(-3, 3), None),
                   progress=False).proc.clip_x0 == 3.0
    # an explicit clip_x0 smaller than the data is refused too, naming the field
    with pytest.raises(ValueError, match=r"lies in \[-1, 1\].*config field sample.clip_x0 = 0.5.*clip_x0: 1 "):
        Trainer(_image_cfg("sample.clip_x0=0.5"), tmp_path / "c", data=(_images(-1, 1), None), progress=False)


def test_image_data_in_minus_1_1_and_toy_data_are_unaffected_by_the_clip_range_check(tmp_path):
    for i, (lo, hi) in enumerate([(-1, 1), (-1.0005, 1.0005)]):  # rounding of x / 127.5 - 1: within 1e-3
        run = Trainer(_image_cfg(), tmp_path / str(i), data=(_images(lo, hi), None), progress=False)
        assert run.proc.clip_x0 == 1.0
    run = Trainer(_image_cfg(), tmp_path / "train", data=(_images(-1, 1), None), progress=False)
    assert run.train()["step"] == 2
    x, y = _xy()  # a 2D toy run (config data toy2d): no clip range, any scale
    assert Trainer(tiny(), tmp_path / "toy", data=(5 * x, y), progress=False).proc.clip_x0 is None


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


# ------------------------------------------------------------------ 6. nothing lost or silently changed
# (issue 29) one training per run folder, the user's config and a checkpoint's files never written
# over, damaged checkpoints named, and a resume that says what it does. The mechanisms:
# tests/training/test_lock.py, test_checksums.py, test_run_config.py, test_resume_horizon.py.
def _cli_run(tmp_path, *overrides, name="run", steps=4):
    """A tiny run trained by ``difflab train``: checkpoints at steps 2 and 4."""
    save_config(tiny(*overrides, steps=steps), tmp_path / f"{name}.yaml")
    run = tmp_path / name
    assert main(["train", "--config", str(tmp_path / f"{name}.yaml"), "--out", str(run), "--quiet"]) == 0
    return run


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_trainings_into_one_folder_one_is_refused(tmp_path, capsys):
    """Two ``difflab train`` processes started at once into one --out: exactly one trains, the
    other exits 2 naming the folder and the owner's process id, and writes nothing. The winner,
    killed with SIGKILL, leaves complete checkpoints and a stale lock, which the next training
    takes over with a note. (Before the lock both exited 0 and one run's work vanished.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    from difflab.training.checkpoint import latest_checkpoint, verify_checkpoint
    from difflab.training.lock import LOCK_NAME

    save_config(tiny(steps=100_000, ckpt_every=20, log_every=20), tmp_path / "c.yaml")
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "difflab.cli", "train", "--config", str(tmp_path / "c.yaml"), "--out", str(run),
            "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        refused = [p for p in procs if p.poll() is not None]
        assert len(refused) == 1, "neither training was refused"
        loser, winner = refused[0], next(p for p in procs if p is not refused[0])
        err = loser.stderr.read()
        assert loser.returncode == 2, err
        assert f"run folder {str(run)!r} is in use by another training (process {winner.pid}" in err, err
        assert "Traceback" not in err and err.count("\n") == 1
        while latest_checkpoint(run) is None and time.monotonic() < deadline:  # the winner trains on
            time.sleep(0.1)
        assert winner.poll() is None and latest_checkpoint(run) is not None
        winner.send_signal(signal.SIGKILL)
        winner.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert (run / LOCK_NAME).is_file()  # a hard kill cannot release it
    ck = verify_checkpoint(run)  # complete, every file as saved
    step = dl.load(run).step
    assert step >= 20 and step % 20 == 0
    rows = (run / "log.csv").read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:] if r]
    assert rows[0].startswith("step,") and steps == sorted(set(steps))  # one run's rows, not two interleaved
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", str(step + 2), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of run folder {str(run)!r}" in err and f"process {winner.pid}" in err
    assert not (run / LOCK_NAME).exists() and dl.load(run).step == step + 2 and ck.name.startswith("step_")


def test_train_never_writes_over_the_users_config_in_the_run_folder(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    save_config(tiny(), exp / "config.yaml")
    mine = "# my experiment: the run goes beside its config\n" + (exp / "config.yaml").read_text()
    (exp / "config.yaml").write_text(mine)
    argv = ["train", "--config", str(exp / "config.yaml"), "--out", str(exp), "--quiet"]
    assert main([*argv, "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{str(exp / 'config.yaml')!r} holds another config than this run's" in err
    assert "steps: 2 there, 3 in this run" in err and "--config" in err
    assert (exp / "config.yaml").read_text() == mine and [p.name for p in exp.iterdir()] == ["config.yaml"]
    assert main(argv) == 0  # the same config: trains, and leaves the file as it is
    assert (exp / "config.yaml").read_text() == mine


def test_export_never_writes_over_a_checkpoint_or_an_existing_file(tmp_path, capsys):
    run = _cli_run(tmp_path)
    ck = run / "checkpoints" / "step_00000004"
    before = _files(run / "checkpoints")
    for out, extra in ((ck / "ema.safetensors", ["--dtype", "fp16"]), (ck / "ema.safetensors", ["--force"]),
                       (ck / "new.safetensors", []), (run / "checkpoints" / "x.safetensors", [])):
        assert main(["export", "--ckpt", str(run), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "inside the checkpoints folder" in err and str(out) in err
    assert _files(run / "checkpoints") == before
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"mine")
    assert main(["export", "--ckpt", str(run), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main(["export", "--ckpt", str(run), "--out", str(out), "--force"]) == 0
    assert dl.load(out).step == 4


def _spray(file, byte=b"\xff", n=4000):
    """n bytes inside a safetensors file's tensor data: it still parses (0xFF...: NaN weights;
    0x3F...: finite ones, 0.75)."""
    import struct

    data = bytearray(file.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0] + 64
    data[start:start + n] = byte * n
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("checksums, byte, words", [
    (True, b"\xff", "NaN or inf"), (False, b"\xff", "NaN or inf"), (True, b"\x3f", "SHA-256 differs")],
    ids=["nan", "nan-old-checkpoint", "finite"])
def test_sample_refuses_corrupted_weights_that_still_parse(tmp_path, capsys, checksums, byte, words):
    """Before: 4,000 bytes of 0xFF gave NaN weights, a blank sample and exit 0. Checkpoints
    from before checksums still get the NaN check; a finite corruption only the checksum sees."""
    run = _cli_run(tmp_path, "model.kwargs.width=64")
    ck = run / "checkpoints" / "step_00000004"
    if not checksums:
        (ck / "checksums.sha256").unlink()
    _spray(ck / "ema.safetensors", byte)
    out = tmp_path / "x.pt"
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "2", "--save-tensor", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{str(ck / 'ema.safetensors')!r} is damaged" in err and words in err and "step_00000002" in err
    assert not out.exists()


def test_resume_refuses_an_export_written_over_a_checkpoints_weights(tmp_path, capsys):
    run = _cli_run(tmp_path)
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "h.safetensors"), "--dtype", "fp16"]) == 0
    ck = run / "checkpoints" / "step_00000004"
    (ck / "ema.safetensors").write_bytes((tmp_path / "h.safetensors").read_bytes())  # by hand, say
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{str(ck / 'ema.safetensors')!r} is damaged (its SHA-256 differs" in err


def test_a_binary_latest_pointer_falls_back_to_the_newest_complete_checkpoint(tmp_path, capsys):
    run = _cli_run(tmp_path)
    (run / "checkpoints" / "latest").write_bytes(bytes(range(256)))
    out = tmp_path / "x.pt"
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "2", "--save-tensor", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{str(run / 'checkpoints' / 'latest')!r} is damaged" in err and "step_00000004" in err
    assert "UnicodeDecodeError" not in err and out.is_file()


def test_resume_names_the_edits_of_the_run_config_it_would_ignore(tmp_path, capsys):
    run = _cli_run(tmp_path)
    text = (run / "config.yaml").read_text()
    edited = text.replace("steps: 4", "steps: 6").replace("batch_size: 8", "batch_size: 16")
    (run / "config.yaml").write_text(edited)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was edited" in err and "steps: 6 there, 4 in this run" in err and "batch_size: 16 there, 8" in err
    assert (run / "config.yaml").read_text() == edited


def test_resume_refuses_a_learning_rate_edited_in_the_checkpoint(tmp_path, capsys):
    """Before: the new lr was recorded in the resumed run's config but the old one trained."""
    run = _cli_run(tmp_path)
    ck = run / "checkpoints" / "step_00000004"
    lr = tiny().optim.lr
    (ck / "config.yaml").write_text((ck / "config.yaml").read_text().replace(f"lr: {lr}", f"lr: {lr * 10}"))
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml was edited after the checkpoint was written" in err and f"optim.lr = {lr * 10}" in err


def test_resume_with_more_steps_says_the_schedule_horizon_moves(tmp_path, capsys):
    run = _cli_run(tmp_path, "optim.decay=cosine")
    assert main(["train", "--out", str(run), "--resume", "--steps", "8", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "now ends at step 8 instead of 4" in err and "not bit-identical to an uninterrupted 8-step run" in err
    assert dl.load(run).step == 8


# ------------------------------------------------------------------ 7. config files (issue 29)
@pytest.mark.parametrize("name, text, words", [
    ("dup.yaml", "steps: 2\nbatch_size: 8\nsteps: 3\n", r"the key 'steps' is given twice \(lines 1 and 3\)"),
    ("nested.yaml", "model:\n  name: mlp\n  kwargs: {dim: 2, width: 16, dim: 3}\n",
     r"the key 'dim' is given twice \(both on line 3\)"),
    ("dup.json", '{"steps": 2, "steps": 3}', r"the key 'steps' is given twice"),
    ("broken.yaml", "steps: [1\n", r"cannot parse config file .*broken\.yaml.*line 2"),
    ("empty.yaml", "", r"config file .*empty\.yaml' is empty; a config needs at least model, data and diffusion"),
    ("comments.yaml", "# nothing yet\n", r"config file .*comments\.yaml' is empty"),
    ("list.yaml", "- steps: 2\n", r"holds a list, not a mapping of config fields"),
])
def test_config_files_that_would_be_misread_are_refused_naming_the_file(name, text, words, tmp_path, capsys):
    """A key given twice kept the last silently; an empty file trained the default config and
    failed on "MLPDenoiser(dim=2)"; YAML errors were tracebacks."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=words) as info:
        load_config(path)
    assert str(path) in str(info.value) and "MLPDenoiser" not in str(info.value)
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err
    assert not run.exists()


def test_a_config_error_names_the_file_it_is_in(tmp_path):
    save_config(tiny(), tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text((tmp_path / "c.yaml").read_text().replace("steps: 2", "steps: -2"))
    with pytest.raises(ValueError, match=r"^config file '.*c\.yaml': config field 'steps': got -2"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("override, words", [
    ("steps=[1", r"override 'steps=\[1': its value '\[1' is not valid YAML"),
    ("model.kwargs={width: 8, width: 9}", r"the key 'width' is given twice"),
])
def test_yaml_errors_in_set_name_the_override(override, words, tmp_path, capsys):
    with pytest.raises(ValueError, match=words):
        apply_overrides(tiny(), [override])
    save_config(tiny(), tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--set",
                 override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"override {override!r}" in err


def test_an_exported_model_with_a_damaged_config_names_the_file(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    x, y = _xy()
    Trainer(tiny(), tmp_path / "run", data=(x, y), progress=False).train()
    out = dl.training.checkpoint.export_model(tmp_path / "run", tmp_path / "m.safetensors")
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    for config, words in (("steps: [1\n", "cannot parse"), ("steps: 1\nsteps: 2\n", "given twice"), ("", "is empty")):
        save_file(load_file(str(out)), str(out), metadata={**meta, "config": config})
        with pytest.raises(ValueError, match=words) as info:
            dl.load(out)
        assert f"'config' metadata of exported model {str(out)!r}" in str(info.value)


# ------------------------------------------------------------------ 8. sharding, activation checkpointing (issue 24)
@pytest.mark.parametrize("overrides, words", [
    (["sharding=zero3"], r"'sharding': got 'zero3'; choose one of none, fsdp"),
    (["sharding=true"], r"'sharding': got True; must be one of none, fsdp"),
    (["activation_checkpointing=1"], r"'activation_checkpointing': got 1; must be true or false"),
    (["sharding=fsdp", "cuda_graph=true"], r"'cuda_graph': got True; cannot capture a sharded step"),
    (["sharding=fsdp", "precision=fp16"], r"'precision': got 'fp16'; fp16's loss scaling.*use precision bf16"),
    (["activation_checkpointing=true", "cuda_graph=true"],
     r"'activation_checkpointing': got True; cannot be captured with cuda_graph.*generator states"),
])
def test_sharding_and_activation_checkpointing_are_checked_with_what_they_cannot_run_with(overrides, words):
    with pytest.raises(ValueError, match=words):
        tiny(*overrides)


def test_cli_train_refuses_a_sharded_captured_step_before_training(tmp_path, capsys):
    save_config(tiny(), tmp_path / "c.yaml")
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(run), "--quiet",
                 "--set", "sharding=fsdp", "--set", "cuda_graph=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cuda_graph'" in err and "sharding: fsdp" in err
    assert not run.exists()


def test_a_sharded_distilled_student_is_refused_before_any_process_group(tmp_path, monkeypatch):
    """A student starts from its teacher's weights, loaded into the whole network after the
    Trainer is built: under torchrun with sharding: fsdp that network would be sharded already.
    The refusal comes before the process group would be started (this test starts none)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = tiny("sharding=fsdp", "distill.method=progressive", "distill.sigmas=[1.0, 0.0]")
    with pytest.raises(ValueError, match=r"'sharding': a distilled student \(progressive\).*sharding: none"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not torch.distributed.is_initialized()

