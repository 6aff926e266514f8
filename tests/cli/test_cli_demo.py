import json

from PIL import Image

from difflab.cli import main
from difflab.cli.demo import run_demo


def test_demo_end_to_end_short(tmp_path):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--train-steps", "300", "--n", "400", "--ddpm-steps", "200",
                 "--ddim-steps", "10", "--quiet"])
    assert code == 0
    for name in ["samples.png", "forward_process.png", "loss.png"]:
        with Image.open(out / name) as im:
            im.verify()
            assert im.size[0] > 100
    with Image.open(out / "reverse_process.gif") as gif:
        assert gif.n_frames > 10
        assert gif.info["duration"] == 100  # ms: fps = 10 (a duration of 1 / fps was read as 0.1 ms)
    m = json.loads((out / "metrics.json").read_text())
    sw = m["sliced_wasserstein"]
    assert set(sw) == {"ddpm_200", "ddim_10", "noise_floor"}
    # even a short run is far closer to the roll than pure noise is (SW to N(0, I) is about 0.4)
    assert sw["ddpm_200"] < 0.3 and sw["ddim_10"] < 0.3
    assert m["final_loss"] < 0.6


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--train-steps", "0", "--quiet"]) == 2
    assert "train_steps" in capsys.readouterr().err


def test_demo_function_returns_metrics(tmp_path):
    m = run_demo(tmp_path, train_steps=50, n=100, ddpm_steps=20, ddim_steps=5, progress=False)
    assert m["n"] == 100 and m["seconds"]["total"] > 0


def test_demo_says_its_threads_one_for_its_small_model_unless_told(tmp_path, capsys, monkeypatch):
    """The demo's MLP (0.56 GFLOP a step) trains on one thread, and says so; --threads overrides.
    (Any step count works: 20 made OneCycleLR's 5% warm-up empty, a ZeroDivisionError.)"""
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # a request too (difflab.devices)
    args = ["demo", "--train-steps", "20", "--n", "50", "--ddpm-steps", "5", "--ddim-steps", "2", "--quiet"]
    torch.set_num_threads(2)
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "cpu threads: 1 (small model: 0.56 GFLOP a step; --threads N to change)"
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["cpu_threads"] == 1
    assert main(args + ["--out", str(tmp_path / "b"), "--threads", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "cpu threads: 2 (as asked; --threads N to change)"
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["cpu_threads"] == 2
    assert main(args + ["--out", str(tmp_path / "c"), "--threads", "-1"]) == 2
    assert "threads (--threads) must be an integer in >= 0" in capsys.readouterr().err
