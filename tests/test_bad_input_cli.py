"""Bad input at the sampling / editing / eval entry points and in hand-damaged checkpoints: each a
clear error naming the flag, argument or file, raised before any sampling."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import difflab as dl
from difflab.cli import main
from difflab.training.checkpoint import LoadedRun, latest_checkpoint, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
# devices that exist on no test machine (plus plain "cuda" where torch has no CUDA)
MISSING_DEVICES = ["gpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("bad_input_cli")


@pytest.fixture(scope="module")
def digits_run(root):
    """configs/digits.yaml (class-conditional MLP on 8x8 digits), narrowed, two steps."""
    run = root / "digits"
    assert main(["train", "--config", str(REPO / "configs" / "digits.yaml"), "--out", str(run), "--steps", "2",
                 "--batch-size", "16", "--ckpt-every", "2", "--sample-every", "-1", "--quiet",
                 "--set", "cpu_threads=1", "--set", "model.kwargs.width=32"]) == 0
    return run


@pytest.fixture(scope="module")
def sr_run(root):
    """A super-resolution model (unet_tiny with 4x4 -> 8x8 low-res conditioning), two steps."""
    cfg = root / "sr.yaml"
    cfg.write_text(
        "model: {name: superres, kwargs: {base: unet_tiny, scale: 2}}\nloss: superres\n"
        "diffusion: {schedule: linear, T: 100}\ndata: {name: digits}\nsample: {every: -1}\n"
        "batch_size: 4\nsteps: 2\ndevice: cpu\ncpu_threads: 1\ncond_drop_prob: 0.0\nlog_every: 1\n"
        "ckpt_every: 2\ntensorboard: false\n")
    run = root / "sr"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def png(root):
    path = root / "digit.png"
    dl.editing.save_images(dl.data.load("digits")[0][:1].reshape(1, 1, 8, 8), path)
    return str(path)


@pytest.fixture
def err(capsys):
    def run(argv):
        assert main([str(a) for a in argv]) == 2
        return capsys.readouterr().err
    return run


@pytest.fixture
def no_sampling(monkeypatch):
    """Sampling through a LoadedRun fails the test: the error must come before it."""
    def boom(*args, **kwargs):
        raise AssertionError("sampled before checking the arguments")
    monkeypatch.setattr(LoadedRun, "sample", boom)


# ----------------------------------------------------------------------- 1. devices
@pytest.mark.parametrize("device", MISSING_DEVICES)
def test_missing_device_is_named_by_every_command(device, digits_run, sr_run, png, tmp_path, err):
    ck, out = ["--ckpt", digits_run], ["--out", tmp_path / "o.png"]
    cmds = [
        ["sample", *ck, "--n", 2, "--steps", 2, *out],
        ["inpaint", *ck, "--input", png, "--mask", "half:top", "--steps", 2, *out],
        ["img2img", *ck, "--input", png, "--steps", 2, *out],
        ["interpolate", *ck, "--seeds", 1, 2, "--steps", 2, *out],
        ["upscale", "--ckpt", sr_run, "--input", png, "--from-highres", "--steps", 2, *out],
        ["eval", *ck, "--n", 4, "--out", tmp_path / "ev"],
    ]
    for argv in cmds:
        msg = err([*argv, "--device", device])
        assert "--device" in msg and repr(device) in msg, (argv[0], msg)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("device", MISSING_DEVICES)
def test_missing_device_in_the_python_api(device, digits_run):
    with pytest.raises(ValueError, match=r"^device: .*" + repr(device)):
        dl.load(digits_run, device=device)
    run = dl.load(digits_run)
    with pytest.raises(ValueError, match=r"^device: .*" + repr(device)):
        run.sample(2, steps=2, device=device)
    with pytest.raises(ValueError, match=r"^device: .*" + repr(device)):
        run.to(device)
    assert run.sample(2, steps=2, seed=0, device="cpu").shape == (2, 1, 8, 8)


# --------------------------------------------------------- 2. guidance without labels
def test_guidance_without_labels_names_the_label_flag(digits_run, err, no_sampling):
    msg = err(["sample", "--ckpt", digits_run, "--guidance", 3, "--n", 2])
    assert "--guidance 3 needs --label" in msg and "cond" not in msg


def test_guidance_without_labels_names_the_labels_argument(digits_run):
    run = dl.load(digits_run)
    with pytest.raises(ValueError, match=r"guidance=3 needs labels=") as info:
        run.sample(4, guidance=3, steps=2)
    assert "cond" not in str(info.value)
    assert run.sample(4, guidance=3, labels=1, steps=2, seed=0).shape == (4, 1, 8, 8)


# ------------------------------------------------- 3. super-resolution models elsewhere
SR_MSG = "this is a super-resolution model"


def test_superres_model_is_refused_outside_upscale(sr_run, png, tmp_path, err):
    ck, out = ["--ckpt", sr_run], ["--out", tmp_path / "o.png"]
    for argv in (["sample", *ck, "--n", 2, "--steps", 2, *out],
                 ["img2img", *ck, "--input", png, "--steps", 2, *out],
                 ["inpaint", *ck, "--input", png, "--mask", "half:top", "--steps", 2, *out],
                 ["interpolate", *ck, "--seeds", 1, 2, "--steps", 2, *out],
                 ["interpolate", *ck, "--input", png, png, "--steps", 2, *out],
                 ["eval", *ck, "--n", 4, "--out", tmp_path / "ev"]):
        msg = err(argv)
        assert SR_MSG in msg and "difflab upscale" in msg, (argv[0], msg)
    assert not (tmp_path / "o.png").exists()
    run = dl.load(sr_run)
    for ema in (True, False):
        with pytest.raises(ValueError, match=SR_MSG):
            run.sample(2, steps=2, ema=ema)
    # upscale still works; the network itself refuses a call without its low-res image
    assert main(["upscale", "--ckpt", str(sr_run), "--input", png, "--from-highres", "--steps", "2",
                 "--out", str(tmp_path / "up.png")]) == 0
    assert (tmp_path / "up.png").is_file()
    with pytest.raises(ValueError, match=SR_MSG):
        run.ema_model(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------- 4. output paths
def test_sample_out_without_an_image_suffix(digits_run, tmp_path, err, no_sampling):
    for bad in ("grid", "", str(tmp_path)):
        msg = err(["sample", "--ckpt", digits_run, "--out", bad])
        assert f"--out {bad!r}" in msg, msg
    assert "needs an image suffix such as .png" in err(["sample", "--ckpt", digits_run, "--out", tmp_path / "g"])
    blocked = tmp_path / "file.txt"
    blocked.write_text("not a folder")
    msg = err(["sample", "--ckpt", digits_run, "--out", tmp_path / "g.png", "--save-tensor", blocked / "x.pt"])
    assert "--save-tensor" in msg and "cannot create its folder" in msg
    assert "--save-tensor" in err(["sample", "--ckpt", digits_run, "--out", tmp_path / "g.png",
                                   "--save-tensor", tmp_path])


def test_editing_commands_check_out_before_sampling(digits_run, png, err, monkeypatch):
    import difflab.cli.img2img as cmd

    monkeypatch.setattr(cmd, "img2img", lambda *a, **k: pytest.fail("sampled before checking --out"))
    assert "--out 'noext' needs an image suffix" in err(["img2img", "--ckpt", digits_run, "--input", png,
                                                        "--out", "noext"])


def test_save_image_grid_names_a_bad_path(tmp_path):
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"path 'noext' needs an image suffix such as \.png"):
        dl.evaluation.save_image_grid(x, "noext")
    with pytest.raises(ValueError, match="is a folder"):
        dl.evaluation.save_image_grid(x, tmp_path)
    with pytest.raises(ValueError, match="output 'noext' needs an image suffix"):
        dl.editing.save_images(x, "noext")
    assert dl.evaluation.save_image_grid(x, tmp_path / "new" / "g.png").is_file()


def test_save_tensor_folder_is_created_and_both_files_written(digits_run, tmp_path):
    out, tensor = tmp_path / "a" / "g.png", tmp_path / "b" / "c" / "x.pt"
    assert main(["sample", "--ckpt", str(digits_run), "--n", "2", "--steps", "2", "--out", str(out),
                 "--save-tensor", str(tensor)]) == 0
    assert out.is_file() and torch.load(tensor).shape == (2, 1, 8, 8)


# ------------------------------------------------------------- 5. damaged checkpoints
def _damage(run_dir, tmp_path, how):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ck = latest_checkpoint(copy)
    how(ck)
    return copy, ck


def _drop_sample_shape(ck):
    state = json.loads((ck / "state.json").read_text())
    del state["sample_shape"]
    (ck / "state.json").write_text(json.dumps(state))


def _edit_width(ck):
    cfg = yaml.safe_load((ck / "config.yaml").read_text())
    cfg["model"]["kwargs"]["width"] = 16
    (ck / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.parametrize("how, file, words", [
    (lambda ck: (ck / "ema.safetensors").write_bytes(b"\x00" * 40), "ema.safetensors", "is damaged"),
    (lambda ck: (ck / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:300]),
     "model.safetensors", "is damaged"),
    (lambda ck: (ck / "state.json").write_text('{"step": 2,'), "state.json", "not valid JSON"),
    (_drop_sample_shape, "state.json", "no 'sample_shape'"),
    (_edit_width, "config.yaml", "do not match the model"),
], ids=["ema", "model-truncated", "state-json", "state-no-shape", "config-edited"])
def test_damaged_checkpoint_names_the_file(how, file, words, digits_run, tmp_path, err):
    run, ck = _damage(digits_run, tmp_path, how)
    with pytest.raises(ValueError, match=words) as info:
        dl.load(run)
    assert str(ck / file) in str(info.value)
    msg = err(["sample", "--ckpt", run, "--out", tmp_path / "g.png"])
    assert str(ck / file) in msg and words in msg


def test_damaged_resume_files_name_the_file(digits_run, tmp_path):
    run, ck = _damage(digits_run, tmp_path, lambda ck: (ck / "rng.pt").write_bytes(b"junk"))
    with pytest.raises(ValueError, match="rng.pt' is damaged"):
        read_checkpoint(run)


# ------------------------------------------------------------------------------ 6. eval
def test_eval_argument_mistakes(digits_run, tmp_path, err):
    ev = ["eval", "--ckpt", digits_run, "--n", 4, "--out", tmp_path / "ev"]
    assert "--batch-size must be >= 1, got 0" in err([*ev, "--batch-size", 0])
    png = tmp_path / "x.png"
    dl.evaluation.save_image_grid(torch.zeros(1, 1, 8, 8), png)
    msg = err([*ev, "--ref", png])
    assert f"--ref {str(png)!r} cannot be read by torch.load" in msg and ".pt file" in msg
    pt = tmp_path / "ref.pt"
    torch.save({"pictures": torch.zeros(4, 1, 8, 8)}, pt)
    assert "no 'images'" in err([*ev, "--ref", pt])
    torch.save(torch.zeros(4, 1, 9, 9), pt)
    assert "(1, 9, 9) but the model makes (1, 8, 8)" in err([*ev, "--ref", pt])


def test_sample_nrow_must_be_positive(digits_run, err, no_sampling):
    """--nrow 0 was taken as "unset" (the default grid), while -2 was refused."""
    for bad in (0, -2):
        assert f"--nrow (images per grid row) must be >= 1, got {bad}" in err(
            ["sample", "--ckpt", digits_run, "--nrow", bad])


def test_train_classifier_export_and_demo_arguments(digits_run, tmp_path, err):
    """--limit 0 raised torch's reduction error and -1300 trained on the last 137 images; testing on
    the training split was reported as held out; --limit took the first images of a split sorted
    by class (a 2-class network); export to a folder raised IsADirectoryError; numpy integers
    were refused by the demo. (The experiments' settings: tests/experiments/test_experiments.py.)"""
    import json

    import numpy as np

    from difflab.cli.demo import _check_int

    assert "--limit must be >= 1" in err(["train-classifier", "--data", "digits", "--limit", 0, "--out", tmp_path / "c"])
    assert "is the training split" in err(["train-classifier", "--data", "digits", "--test-split", "train",
                                           "--out", tmp_path / "c"])
    assert main(["train-classifier", "--data", "digits", "--limit", "60", "--epochs", "1", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 0
    meta = json.loads((tmp_path / "c" / "classifier.json").read_text())
    assert meta["config"]["num_classes"] == 10  # a random 60 of the training split, not its first 60
    (tmp_path / "d.safetensors").mkdir()
    assert "is a folder; name a file" in err(["export", "--ckpt", digits_run, "--out", tmp_path / "d.safetensors"])
    _check_int("n", np.int64(50), 2)  # numpy integers are integers
