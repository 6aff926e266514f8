"""experiments/latent.py --size tiny: its code path (an autoencoder, the latent config and its
pixel-space twin trained a few steps on the MNIST-like fixture, a classifier, the rows at two
guidance scales, the floors, the step and sampling times, the grids); the numbers mean nothing here."""

import json

from experiments import latent


def test_latent_tiny_writes_the_comparison(tmp_path, mnist_dir):
    out = tmp_path / "out"
    assert latent.main(["--size", "tiny", "--out", str(out), "--root", str(mnist_dir)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["runs"]["latent"]["sample_shape"] == [4, 7, 7] and res["runs"]["pixel"]["sample_shape"] == [1, 28, 28]
    assert res["runs"]["latent"]["image_shape"] == res["runs"]["pixel"]["image_shape"] == [1, 28, 28]
    assert [(r["model"], r["guidance"]) for r in res["rows"]] == [
        ("latent", 1.0), ("latent", 3.0), ("pixel", 1.0), ("pixel", 3.0)]
    for row in res["rows"]:
        assert row["fid"] >= 0 and 0 <= row["accuracy"] <= 1 and row["sampling_cpu_s_per_1000"] > 0
        assert (row["decoding_cpu_s_per_1000"] > 0) == (row["model"] == "latent")
    assert set(res["floors"]) == {"real train5k", "autoencoder reconstructions of them"}
    assert all(s > 0 for s in res["training_step_cpu_s"].values()) and res["encoding_cpu_s_per_1000"] > 0
    assert (out / "latent_samples.png").stat().st_size > 0 and (out / "pixel_samples.png").stat().st_size > 0
