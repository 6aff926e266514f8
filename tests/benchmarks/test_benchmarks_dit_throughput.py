"""benchmarks/dit_throughput.py on the CPU: the tiny configuration runs both libraries' training
step and guided sampling loop, the FLOP count, memory fields, JSON and the summary; the GPU rows'
eager options (bf16 autocast, weights stored in bf16, fused AdamW) run here too. Compilation and
CUDA graphs are the GPU run's (benchmarks/gpu_session.sh issue24)."""

import json
import re

import pytest
import torch
from scripts import REPO, load_script

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def load():
    return load_script("benchmarks/dit_throughput.py")


def test_dit_throughput_cpu_run_writes_every_field(tmp_path, capsys):
    bench = load()
    out = tmp_path / "dit.json"
    res = bench.main(["--device", "cpu", "--out", str(out), "--sample-steps", "2", "--train-iters", "1",
                      "--repeats", "1", "--profile", str(tmp_path / "prof")])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"], default=str))
    meta = saved["meta"]
    assert meta["tiny"] and meta["network"] == "tiny" and meta["sample_forward_batch"] == 2 * meta["sample_batch"]
    # diffusers' DiT has a time MLP and a label table in every block (tests/test_crosscheck_dit.py):
    # more parameters than difflab's one of each, by exactly those
    kw = bench.NETWORKS["tiny"][1]
    width, depth, k = kw["hidden_size"], kw["depth"], kw["num_classes"]
    embedders = (256 * width + width) + (width * width + width) + (k + 1) * width
    assert meta["parameters"]["diffusers"] - meta["parameters"]["difflab"] == (depth - 1) * embedders
    flops = meta["flops_per_image"]
    for lib in ("difflab", "diffusers"):
        f = flops[lib]
        assert f["train"] == 3 * f["forward"] and f["sample"] == 2 * meta["sample_steps"] * f["forward"] > 0
    assert flops["difflab"]["forward"] == pytest.approx(flops["diffusers"]["forward"], rel=0.05)

    rows = {(r["library"], r["what"], r["name"]): r for r in saved["rows"]}
    assert set(rows) == {(lib, what, "fp32") for lib in ("difflab", "diffusers") for what in ("train", "sample")}
    for key, r in rows.items():
        assert "error" not in r, (key, r.get("error"))
        assert r["images_per_s"] > 0 and r["ms_per_iteration"] > 0 and r["vs_diffusers_best"] > 0, key
        assert r["flops_per_image"] == flops[key[0]][key[1]] and r["mfu"] is None  # no bf16 peak on a CPU
        assert r["profile"]["by_kind_ms"]
        if r["what"] == "train":
            assert r["final_loss"] > 0
        else:
            assert r["sample_finite"] and r["images_per_iteration"] == meta["sample_batch"]
    for what, target in (("train", 1.5), ("sample", 2.0)):
        s = saved["summary"][what]
        assert s["target_ratio"] == target and "no_verdict" in s  # no bf16 + compile reference on a CPU
        assert s["ratio"] == pytest.approx(s["difflab_images_per_s"] / s["diffusers_images_per_s"])
    printed = capsys.readouterr().out
    assert "classifier-free guidance w = 4" in printed and "(target 1.5x" in printed

    bench.main(["--report", str(out)])
    assert "| sample | difflab | fp32 |" in capsys.readouterr().out


def test_the_gpu_rows_eager_options_run_on_the_cpu(tmp_path):
    """The GPU table's rows without compile or graphs, and the stored-bf16 weights, measured by
    ``measure`` on the CPU: bf16 autocast in both libraries' sampling, fused AdamW in both steps."""
    bench = load()
    args = bench.parse_args(["--device", "cpu", "--sample-steps", "2", "--train-iters", "1", "--repeats", "1",
                             "--out", str(tmp_path / "x.json")])
    env = bench.Env(args)
    specs = {(s["library"], s["what"], s["name"]): s for s in bench.row_specs(cpu=False)}
    eager = [specs[("diffusers", "sample", "bf16")], specs[("difflab", "sample", "bf16")],
             specs[("difflab", "train", "bf16+fused")],
             bench._row("diffusers", "train", "fused", fused=True),
             bench._row("difflab", "sample", "bf16w", precision="bf16", weights="bf16"),
             bench._row("diffusers", "sample", "bf16w", precision="bf16", weights="bf16")]
    f = {lib: {"train": 1.0, "sample": 1.0} for lib in ("difflab", "diffusers")}
    for spec in eager:
        row = bench.measure(spec, env, f)
        assert "error" not in row, (spec["name"], row.get("error"))
        assert row["images_per_s"] > 0
        if spec["what"] == "sample":
            assert row["sample_finite"]
            # bf16 rows against the library's first (bf16 autocast, float32 weights) row: close, not equal
            assert row["mean_abs_diff_vs_first_row"] < 0.1
    env.tmp.cleanup()


def test_the_two_networks_are_configured_alike():
    """diffusers' configuration is read off difflab's DiT-B/2: the paper's table 1 on 32x32x4."""
    bench = load()
    with torch.device("meta"):
        ours = bench.difflab_dit("dit_b_2")
        cfg = bench.diffusers_config(ours)
        theirs = bench.diffusers_dit("dit_b_2")
    assert cfg == dict(num_layers=12, num_attention_heads=12, attention_head_dim=64, sample_size=32, patch_size=2,
                       in_channels=4, out_channels=4, num_embeds_ada_norm=1000, norm_eps=1e-6)
    assert sum(p.numel() for p in ours.parameters()) == 130_303_504  # DiT-B/2 without learned sigma
    assert theirs.config.num_layers == 12 and theirs.out_channels == 4
    # 23.0 GMACs a forward (the paper's "Gflops" of DiT-B/2 count multiply-adds): 46.0 GFLOP
    assert bench.forward_flops("dit_b_2", "difflab") == pytest.approx(46.0e9, rel=0.01)


def test_gpu_session_dit_priority_names_real_rows():
    """benchmarks/gpu_session.sh issue24 orders the rows by name: a misspelt name would silently
    fall to the end (the final '*'), so every name without a wildcard must be a row."""
    script = (REPO / "benchmarks" / "gpu_session.sh").read_text()
    names = re.findall(r"'([^']+)'", re.search(r"^DIT_PRIORITY=\((.*?)\)$", script, re.S | re.M).group(1))
    rows = {f"{r['library']}/{r['what']}/{r['name']}" for r in load().row_specs(cpu=False)}
    exact = [n for n in names if "*" not in n]
    assert len(exact) >= 8 and len(set(exact)) == len(exact)
    assert [n for n in exact if n not in rows] == []
    assert names[-1] == "*"  # and every other row after them
    assert "dit_throughput.py --rows \"${DIT_PRIORITY[@]}\"" in script


def test_bad_options_are_refused_by_name():
    bench = load()
    for argv in (["--guidance", "1"], ["--sample-steps", "0"], ["--time-budget", "0"], ["--train-warmup", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
