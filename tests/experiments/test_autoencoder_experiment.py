"""experiments/autoencoder.py --size tiny: its code path (an autoencoder trained on the MNIST-like
fixture, a classifier, the floor and reconstruction rows, the checks, the picture); the numbers
mean nothing at this size."""

import json

from experiments import autoencoder


def test_autoencoder_tiny_writes_metrics_checks_and_the_picture(tmp_path, mnist_dir):
    out = tmp_path / "out"
    assert autoencoder.main(["--size", "tiny", "--out", str(out), "--root", str(mnist_dir), "--quiet"]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["step"] == autoencoder.SIZES["tiny"]["steps"] and res["latent_shape"] == [4, 7, 7]
    assert set(res["rows"]) == {"real", "reconstruction_mean", "reconstruction_sampled"}
    for row in res["rows"].values():
        assert row["fid"] >= 0 and 0 <= row["accuracy"] <= 1
    assert res["rows"]["reconstruction_mean"]["mse"] > 0 and res["scaling_factor"] > 0
    assert all(isinstance(c["pass"], bool) for c in res["must_show"].values())
    assert (out / "reconstructions.png").stat().st_size > 0
