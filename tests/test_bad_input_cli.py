"""Bad input at the sampling / editing / eval entry points and in hand-damaged checkpoints: each a
clear error naming the flag, argument or file, raised before any sampling."""

import errno
import json
import os
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


# ------------------------------------------- 7. one-line errors: OS, memory, parse, packages (issue 29)
# Every failure of the command is one line `difflab CMD: error: ...` naming the file and the fix:
# exit 2 for bad input, 1 for the environment (OS, memory, a missing package); --debug shows the
# traceback instead (difflab/cli/_errors.py).
TOY_CONFIG = ("model: {name: mlp, kwargs: {dim: 2, width: 16, depth: 1}}\ndiffusion: {schedule: linear, T: 100}\n"
              "data: {name: toy2d, kwargs: {dataset: swiss_roll, n: 64}}\nsample: {every: -1}\nbatch_size: 8\n"
              "steps: 2\nckpt_every: 2\ndevice: cpu\ncpu_threads: 1\ntensorboard: false\n")


@pytest.fixture(scope="module")
def toy_config(root):
    path = root / "toy.yaml"
    path.write_text(TOY_CONFIG)
    return path


@pytest.fixture(scope="module")
def toy_run(root, toy_config):
    """A 2-D model (vectors, no images): a tiny MLP on the swiss roll, two steps."""
    run = root / "toy"
    assert main(["train", "--config", str(toy_config), "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture
def fails(capsys):
    """main(argv) must exit with ``code`` and one line on stderr (no traceback); returns the line."""
    def run(argv, code):
        assert main([str(a) for a in argv]) == code
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"difflab {argv[0]}: error: "), lines
        return lines[0]
    return run


class _Unwritable:
    """A file opened for writing whose write() fails as a full disk does: no file name."""

    def __init__(self, f, code):
        self._f, self._code = f, code

    def write(self, data):
        raise OSError(self._code, os.strerror(self._code))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def deny_writes(monkeypatch, folder: Path, code: int, access: bool = True) -> None:
    """Writing under ``folder`` fails with OS error ``code``, by Python's own file functions, so the
    test means the same as root (CI), where chmod cannot make a folder read-only.

    EACCES (a read-only folder): opening, creating or renaming a file there fails naming it, and
    os.access says so (``access=False``: it does not, so the commands fail at the write).
    ENOSPC (a full disk): files open, but every write() fails naming no file,
    as the kernel's write does."""
    import builtins
    import io

    top = os.path.abspath(folder)

    def under(p) -> bool:
        if not isinstance(p, (str, bytes, os.PathLike)):
            return False
        p = os.path.abspath(os.fsdecode(p))
        return p == top or p.startswith(top + os.sep)

    def refuse(p):
        raise OSError(code, os.strerror(code), os.fsdecode(p))

    real = {"open": builtins.open, "os_open": os.open, "mkdir": os.mkdir, "replace": os.replace,
            "access": os.access}

    def open_(file, mode="r", *args, **kwargs):
        writing = any(c in mode for c in "wax+")
        if writing and under(file) and code != errno.ENOSPC:
            refuse(file)
        f = real["open"](file, mode, *args, **kwargs)
        return _Unwritable(f, code) if writing and under(file) else f

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path) and code != errno.ENOSPC:
            refuse(path)
        return real["os_open"](path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if under(path) and os.path.abspath(path) != top and code != errno.ENOSPC:
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            refuse(path)
        return real["mkdir"](path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if under(dst) and code != errno.ENOSPC:
            refuse(dst)
        return real["replace"](src, dst, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and under(path) and code != errno.ENOSPC and access:
            return False
        return real["access"](path, mode, *args, **kwargs)

    for module, name, fn in ((builtins, "open", open_), (io, "open", open_), (os, "open", os_open),
                             (os, "mkdir", mkdir), (os, "replace", replace), (os, "rename", replace),
                             (os, "access", access)):
        monkeypatch.setattr(module, name, fn)


@pytest.fixture(params=["up front", "at the write"])
def read_only(request, tmp_path, monkeypatch):
    """A read-only folder: refused before any work (chmod where that works, not as root; else
    deny_writes), or (os.access fooled, as by ACLs or a network file system) when writing to it."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if request.param == "up front":
        folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root: chmod changes nothing
        deny_writes(monkeypatch, folder, errno.EACCES, access=request.param == "up front")
    yield folder
    monkeypatch.undo()
    folder.chmod(0o755)


def _every_command(digits_run, sr_run, toy_run, toy_config, png, out: Path, elsewhere: Path) -> dict:
    """Each command with its output (file or folder) in ``out``; two sampling steps each."""
    dig, edit = ["--ckpt", digits_run], ["--steps", 2]
    return {
        "sample": ["sample", *dig, "--n", 2, *edit, "--out", out / "g.png"],
        "sample --save-tensor": ["sample", *dig, "--n", 2, *edit, "--out", elsewhere / "g.png",
                                 "--save-tensor", out / "x.pt"],
        "inpaint": ["inpaint", *dig, "--input", png, "--mask", "half:top", *edit, "--out", out / "i.png"],
        "img2img": ["img2img", *dig, "--input", png, *edit, "--out", out / "i.png"],
        "interpolate": ["interpolate", *dig, "--seeds", 1, 2, "--frames", 2, *edit, "--out", out / "i.png"],
        "upscale": ["upscale", "--ckpt", sr_run, "--input", png, "--from-highres", *edit, "--out", out / "u.png"],
        "eval": ["eval", "--ckpt", toy_run, "--n", 11, *edit, "--quiet", "--out", out / "ev"],
        "export": ["export", *dig, "--out", out / "m.safetensors"],
        "train": ["train", "--config", toy_config, "--quiet", "--out", out / "run"],
        "train-classifier": ["train-classifier", "--data", "digits", "--limit", 20, "--epochs", 1, "--quiet",
                             "--out", out / "clf"],
        "demo": ["demo", "--train-steps", 1, "--n", 4, "--ddpm-steps", 2, "--ddim-steps", 2, "--quiet",
                 "--out", out / "demo"],
    }


COMMANDS = ["sample", "sample --save-tensor", "inpaint", "img2img", "interpolate", "upscale", "eval", "export",
            "train", "train-classifier", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_output_folder_is_one_line_for_every_command(command, digits_run, sr_run, toy_run, toy_config,
                                                                 png, read_only, tmp_path, fails):
    argv = _every_command(digits_run, sr_run, toy_run, toy_config, png, read_only, tmp_path)[command]
    msg = fails(argv, 1)
    flag = "--save-tensor" if command == "sample --save-tensor" else "--out"
    assert "permission denied" in msg and str(read_only) in msg and f"({flag})" in msg, msg
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("command", ["sample", "sample --save-tensor", "inpaint", "eval", "export", "train",
                                     "train-classifier"])
def test_a_full_disk_says_so_and_names_the_file(command, digits_run, sr_run, toy_run, toy_config, png, tmp_path,
                                                monkeypatch, fails):
    """A full disk fails at write(), which names no file: the message names the file written."""
    full = tmp_path / "full"
    full.mkdir()
    argv = _every_command(digits_run, sr_run, toy_run, toy_config, png, full, tmp_path)[command]
    deny_writes(monkeypatch, full, errno.ENOSPC)
    import safetensors

    def no_space(tensors, filename, metadata=None):  # safetensors writes from Rust, past Python's open
        raise safetensors.SafetensorError(f"Error while serializing: I/O error: No space left on device "
                                          f"(os error 28) at path {str(filename)!r}")
    monkeypatch.setattr(dl.training.checkpoint, "save_file", no_space)
    msg = fails(argv, 1)
    flag = "--save-tensor" if command == "sample --save-tensor" else "--out"
    assert "no space left on device" in msg and str(full) in msg and f"({flag})" in msg, msg
    assert ".tmp" not in msg  # the file asked for, not the temporary one beside it
    leftovers = [p for p in full.rglob("*") if p.is_file() and ".tmp" in p.name]
    assert leftovers == []


def test_os_errors_from_anywhere_are_one_line(digits_run, tmp_path, monkeypatch, fails):
    """Whatever raises them: an OS error names its file and exits 1; a missing file exits 2."""
    def boom(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/some/where.png")
    monkeypatch.setattr(LoadedRun, "sample", boom)
    msg = fails(["sample", "--ckpt", digits_run, "--out", tmp_path / "g.png"], 1)
    assert "permission denied: '/some/where.png'" in msg
    msg = fails(["sample", "--ckpt", tmp_path / "nothing", "--out", tmp_path / "g.png"], 2)
    assert str(tmp_path / "nothing") in msg


def test_too_many_samples_are_refused_before_sampling(digits_run, tmp_path, fails, no_sampling):
    """--n 100000000 tried a 25.6 GB allocation (a traceback, or the OOM killer)."""
    msg = fails(["sample", "--ckpt", digits_run, "--n", 100_000_000, "--out", tmp_path / "g.png"], 1)
    assert "--n 100000000 needs at least" in msg and "GB of memory" in msg and "lower --n" in msg, msg
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 25600000000 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 24.00 GiB"),
    MemoryError(),
], ids=["cpu-allocator", "cuda", "python"])
def test_running_out_of_memory_is_one_line(error, digits_run, tmp_path, monkeypatch, fails):
    def boom(*args, **kwargs):
        raise error
    monkeypatch.setattr(LoadedRun, "sample", boom)
    msg = fails(["sample", "--ckpt", digits_run, "--n", 2, "--out", tmp_path / "g.png"], 1)
    assert "out of" in msg and "memory" in msg and "--n" in msg, msg
    if "25600000000" in str(error):
        assert "25.6 GB" in msg


def test_debug_shows_the_traceback_before_or_after_the_command(digits_run, tmp_path):
    argv = ["sample", "--ckpt", str(digits_run), "--out", ""]
    with pytest.raises(ValueError, match="--out '' is empty"):
        main(["--debug", *argv])
    with pytest.raises(ValueError, match="--out '' is empty"):
        main([*argv, "--debug"])


def test_a_missing_optional_package_names_the_extra(digits_run, tmp_path, monkeypatch, fails):
    import torchmetrics.utilities.imports as imports

    monkeypatch.setattr(imports, "_TORCH_FIDELITY_AVAILABLE", False)  # as where torch-fidelity is not installed
    msg = fails(["eval", "--ckpt", digits_run, "--n", 11, "--features", "inception", "--out", tmp_path / "ev"], 1)
    assert "torch-fidelity" in msg and "pip install 'difflab[inception]'" in msg

    def no_module(*args, **kwargs):  # an import deep inside a library: named with its extra
        raise ModuleNotFoundError("No module named 'torch_fidelity'", name="torch_fidelity")
    monkeypatch.setattr(dl.cli.eval, "inception_features", no_module)
    msg = fails(["eval", "--ckpt", digits_run, "--n", 11, "--features", "inception", "--out", tmp_path / "ev"], 1)
    assert "torch_fidelity" in msg and "pip install 'difflab[inception]'" in msg


def test_yaml_errors_name_the_override_or_the_file(toy_config, digits_run, tmp_path, fails):
    out = tmp_path / "run"
    msg = fails(["train", "--config", toy_config, "--out", out, "--set", "steps=[1"], 2)
    assert "override 'steps=[1'" in msg and "not valid YAML" in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text(TOY_CONFIG + "optim: {lr: [1e-3}\n")
    msg = fails(["train", "--config", bad, "--out", out], 2)
    assert f"cannot parse config file {str(bad)!r}" in msg and "line 11" in msg
    assert not out.exists()
    # an exported model whose config metadata is damaged
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    exported = tmp_path / "m.safetensors"
    assert main(["export", "--ckpt", str(digits_run), "--out", str(exported)]) == 0
    with safe_open(str(exported), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(exported)), str(exported), metadata={**meta, "config": "model: {name: [mlp\n"})
    msg = fails(["sample", "--ckpt", exported, "--out", tmp_path / "g.png"], 2)
    assert "'config' metadata of exported model" in msg and str(exported) in msg


@pytest.mark.parametrize("command", ["sample", "export", "eval", "train", "train-classifier", "demo",
                                     "sample --save-tensor"])
def test_an_empty_out_is_refused(command, digits_run, sr_run, toy_run, toy_config, png, tmp_path, monkeypatch, fails):
    """--out "" was read as "unset": train wrote runs/<config name>, eval eval/<run name>."""
    monkeypatch.chdir(tmp_path)
    argv = _every_command(digits_run, sr_run, toy_run, toy_config, png, tmp_path, tmp_path)[command]
    flag = "--save-tensor" if command == "sample --save-tensor" else "--out"
    argv[argv.index(flag) + 1] = ""
    assert f"{flag} '' is empty" in fails(argv, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_editing_commands_refuse_a_model_of_vectors(toy_run, png, tmp_path, fails):
    """Inpainting a 2-D model said "not enough values to unpack (expected 3, got 2)"."""
    for argv in (["inpaint", "--ckpt", toy_run, "--input", png, "--mask", "half:top"],
                 ["img2img", "--ckpt", toy_run, "--input", png],
                 ["interpolate", "--ckpt", toy_run, "--seeds", 1, 2]):
        msg = fails([*argv, "--steps", 2, "--out", tmp_path / "o.png"], 2)
        assert "makes vectors of shape (2,)" in msg and "not images" in msg and "dl.editing.inpaint" in msg
    assert not (tmp_path / "o.png").exists()


def test_a_mask_png_with_nothing_to_fill_is_refused(digits_run, png, tmp_path, fails):
    """A black mask PNG filled nothing and exited 0 (an empty box mask was refused)."""
    black = tmp_path / "black.png"
    dl.editing.save_images(-torch.ones(1, 1, 8, 8), black)
    msg = fails(["inpaint", "--ckpt", digits_run, "--input", png, "--mask", black, "--steps", 2,
                 "--out", tmp_path / "o.png"], 2)
    assert str(black) in msg and "no white pixel" in msg
    assert not (tmp_path / "o.png").exists()
    assert "box x0,y0,x1,y1 = 2,2,2,4" in fails(["inpaint", "--ckpt", digits_run, "--input", png, "--mask",
                                                 "box:2,2,2,4", "--out", tmp_path / "o.png"], 2)


def test_bpd_bins_zero_is_refused(toy_run, tmp_path, fails):
    """--bpd-bins 0 became 17 (the digits' levels) without a word."""
    for bad in (0, 1, -5):
        msg = fails(["eval", "--ckpt", toy_run, "--n", 11, "--bpd-bins", bad, "--out", tmp_path / "ev"], 2)
        assert f"--bpd-bins (levels of the data) must be >= 2, got {bad}" in msg
    assert not (tmp_path / "ev").exists()


def test_a_damaged_or_mismatched_classifier_names_the_file(digits_run, tmp_path, fails):
    from difflab.evaluation.classifier import load_classifier

    clf = tmp_path / "clf"
    assert main(["train-classifier", "--data", "digits", "--limit", "20", "--epochs", "1", "--quiet",
                 "--out", str(clf)]) == 0
    json_file, weights = clf / "classifier.json", clf / "classifier.safetensors"
    good_json, good_weights = json_file.read_text(), weights.read_bytes()
    info = json.loads(good_json)
    for damage, file, words in [
        (lambda: json_file.write_text(good_json[:40]), json_file, "not valid JSON"),
        (lambda: json_file.write_text(json.dumps({**info, "config": {**info["config"], "width": 8}})), weights,
         "does not match the classifier"),
        (lambda: json_file.write_text(json.dumps({**info, "config": {**info["config"], "depth": 3}})), json_file,
         "does not build the classifier"),
        (lambda: weights.write_bytes(good_weights[:200]), weights, "not a readable safetensors file"),
    ]:
        json_file.write_text(good_json)
        weights.write_bytes(good_weights)
        damage()
        with pytest.raises(ValueError, match=words) as info_:
            load_classifier(clf)
        assert str(file) in str(info_.value)
        msg = fails(["eval", "--ckpt", digits_run, "--n", 11, "--classifier", clf, "--features", "cnn",
                     "--out", tmp_path / "ev"], 2)
        assert str(file) in msg and words in msg, msg


def test_eval_refuses_more_samples_than_memory_before_sampling(digits_run, tmp_path, fails, monkeypatch):
    import difflab.cli.eval as cmd

    monkeypatch.setattr(cmd, "draw_samples", lambda *a, **k: pytest.fail("sampled before checking --n"))
    msg = fails(["eval", "--ckpt", digits_run, "--n", 10**11, "--out", tmp_path / "ev"], 1)
    assert "--n 100000000000 needs at least" in msg and "lower --n" in msg
    assert not (tmp_path / "ev").exists()
