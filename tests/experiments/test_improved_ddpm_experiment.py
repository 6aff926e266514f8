"""experiments/improved_ddpm.py --size tiny: the learned-variance comparison's code path (L_simple and
L_hybrid twins of the shipped configs, bits/dim under each variance, respaced DDPM with each variance,
the tables) on the MNIST-format fixture; the numbers mean nothing at this size."""

import json

import yaml

from experiments import improved_ddpm


def test_improved_ddpm_tiny_writes_the_comparison(tmp_path, mnist_dir):
    out = tmp_path / "out"
    argv = ["--size", "tiny", "--out", str(out), "--runs", str(tmp_path / "runs"), "--mnist-root", str(mnist_dir)]
    assert improved_ddpm.main(argv) == 0
    res = json.loads((out / "metrics.json").read_text())
    for name in ("digits", "digits_sqrt", "mnist14"):
        row = res["likelihood"][name]["rows"][0]
        assert {"hybrid_learned", "hybrid_posterior", "hybrid_beta", "simple_posterior", "simple_beta"} <= set(row)
        assert row["simple_best"] == min(row["simple_posterior"], row["simple_beta"])
        assert all(row[k] > 0 for k in ("hybrid_learned", "simple_best"))
    steps = improved_ddpm.SIZES["tiny"]["respaced"][0]
    for tag in ("digits", "digits_sqrt"):
        assert set(res["few_steps"][tag]["must_show"][str(steps)]) >= {"learned", "simple_beta", "simple_posterior",
                                                                       "holds"}
    assert "| digits |" in (out / "table.md").read_text() and "| digits_sqrt | " in (out / "table.md").read_text()
    # the sqrt twins differ from the shipped ones in the schedule only
    sqrt = improved_ddpm.configs("digits", 5, 0, str(mnist_dir), "sqrt")
    assert sqrt["hybrid"]["diffusion"].pop("schedule") == "sqrt" and sqrt["simple"]["diffusion"].pop("schedule") == "sqrt"
    plain = improved_ddpm.configs("digits", 5, 0, str(mnist_dir))
    for kind in ("hybrid", "simple"):
        plain[kind]["diffusion"].pop("schedule")
    assert sqrt == plain
    # the twins differ in the variance only: L_simple drops learn_sigma, the loss and the vlb section
    cfgs = improved_ddpm.configs("digits", 5, 0, str(mnist_dir))
    hybrid, simple = cfgs["hybrid"], cfgs["simple"]
    assert hybrid["model"]["kwargs"].pop("learn_sigma") and hybrid.pop("loss") == "hybrid" and hybrid.pop("vlb")
    assert simple.pop("loss") == "diffusion" and hybrid == simple
    assert yaml.safe_dump(simple)  # plain data, as written to the run's config
