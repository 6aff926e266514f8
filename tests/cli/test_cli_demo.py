import json

import pytest
import torch
from PIL import Image

from difflab.cli import main
from difflab.cli.demo import DEMO_SAMPLERS, demo_process, run_demo
from difflab.models import EDMPrecond
from difflab.processes import EDM, PROCESSES, VESDE


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


# network evaluations of a run of s steps, counted from each sampler's algorithm (not from the registry):
# one a step; Heun two, but none after its last step, to sigma = 0
EVALUATIONS = {"ddpm": lambda s: s, "ddim": lambda s: s, "dpmpp_2m": lambda s: s, "euler": lambda s: s,
               "euler_maruyama": lambda s: s, "heun": lambda s: 2 * s - 1}


@pytest.mark.parametrize("process", list(PROCESSES))
def test_demo_runs_every_process_and_records_what_it_ran(process, tmp_path, capsys, monkeypatch):
    """Toy size (the quality of a full run is measured in docs): the pictures and metrics.json are
    written as for DDPM, naming the process, its two samplers and their settings, on one thread."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    out = tmp_path / process
    assert main(["demo", "--process", process, "--out", str(out), "--train-steps", "20", "--n", "50",
                 "--steps", "5", "--fast-steps", "3", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("cpu threads: 1 (small model: ")
    for name in ["samples.png", "forward_process.png", "loss.png"]:
        with Image.open(out / name) as im:
            im.verify()
    with Image.open(out / "reverse_process.gif") as gif:
        assert gif.n_frames >= 5 + 1  # every step of the first sampler, then the samples
    m = json.loads((out / "metrics.json").read_text())
    assert m["process"] == process and m["cpu_threads"] == 1
    assert m["process_settings"].startswith(PROCESSES[process].__name__ + "(")
    first, second = DEMO_SAMPLERS[process]
    keys = [f"{first.label}_5", f"{second.label}_3"]
    assert list(m["samplers"]) == keys
    assert list(m["sliced_wasserstein"]) == list(m["mmd2"]) == keys + ["noise_floor"]
    assert m["sliced_wasserstein_settings"] == {"fresh_sets": 8, "projections": 64}
    for key, s, steps in zip(keys, (first, second), (5, 3)):
        rec = m["samplers"][key]
        assert (rec["sampler"], rec["steps"], rec["spacing"], rec["options"]) == (s.sampler, steps, s.spacing,
                                                                                  dict(s.options))
        assert rec["network_evaluations"] == EVALUATIONS[s.sampler](steps)
        assert m["seconds"][s.label] > 0
    assert all(v >= 0 for v in m["sliced_wasserstein"].values())


def test_demo_sets_edm_and_ve_for_the_data():
    """EDM's sigma_data is the data's standard deviation, in the process and in its
    preconditioning; VE's sigma_max is at least the largest distance between training points
    (Song & Ermon 2020), and 50 (Song et al. 2021) where that is more."""
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [-1.0, 2.0]])
    edm, model = demo_process("edm", points)
    assert isinstance(edm, EDM) and isinstance(model, EDMPrecond)
    want = float(torch.cat([points[:, 0], points[:, 1]]).std())
    assert edm.sigma_data == pytest.approx(want) and model.sigma_data == pytest.approx(want)
    ve, _ = demo_process("ve", points)
    assert isinstance(ve, VESDE) and ve.sigma_max == pytest.approx(50.0)
    ve, _ = demo_process("ve", 20 * points)  # largest distance 100
    assert ve.sigma_max == pytest.approx(100.0)


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--train-steps", "0", "--quiet"]) == 2
    assert "train_steps" in capsys.readouterr().err


def test_demo_refuses_an_unknown_process_and_another_process_s_step_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--process", "sde", "--out", str(tmp_path / "a")])
    assert exit_.value.code == 2
    assert "--process: invalid choice: 'sde'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"process \(--process\) must be one of ddpm, vp, ve, edm, flow"):
        run_demo(tmp_path / "b", process="sde")
    assert main(["demo", "--process", "vp", "--ddim-steps", "10", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "ddim_steps (--ddim-steps) sets the DDPM chain's samplers" in capsys.readouterr().err
    assert main(["demo", "--steps", "10", "--ddpm-steps", "10", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "steps and ddpm_steps set the same sampler's steps" in capsys.readouterr().err
    assert main(["demo", "--process", "flow", "--fast-steps", "0", "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert "fast_steps (--fast-steps) must be an integer in >= 1" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abcde")  # refused before training


def test_demo_function_returns_metrics(tmp_path):
    m = run_demo(tmp_path, train_steps=50, n=100, ddpm_steps=20, ddim_steps=5, progress=False)
    assert m["n"] == 100 and m["seconds"]["total"] > 0
    assert m["process"] == "ddpm" and set(m["samplers"]) == {"ddpm_20", "ddim_5"}


def test_demo_says_its_threads_one_for_its_small_model_unless_told(tmp_path, capsys, monkeypatch):
    """The demo's MLP (0.56 GFLOP a step) trains on one thread, and says so; --threads overrides.
    (Any step count works: 20 made OneCycleLR's 5% warm-up empty, a ZeroDivisionError.)"""
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
