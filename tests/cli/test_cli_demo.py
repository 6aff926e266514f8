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
