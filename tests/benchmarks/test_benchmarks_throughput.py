"""benchmarks/throughput.py (and its parts, benchmarks/throughput_lib/) on the CPU: the tiny
configuration runs every code path the GPU run uses (both libraries, training and sampling,
FLOP counting, profiling, JSON, merging)."""

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from scripts import REPO, benchmarks_on_path, load_script

pytest.importorskip("diffusers")
benchmarks_on_path()
from throughput_lib import env, memory, profiling, report, verdict  # noqa: E402
from throughput_lib import measure as measuring  # noqa: E402
from throughput_lib import rows as row_table  # noqa: E402


def load():
    """The command line: main and parse_args."""
    return load_script("benchmarks/throughput.py")


def test_throughput_cpu_run_writes_every_field(tmp_path, capsys, monkeypatch):
    bench = load()
    out = tmp_path / "throughput.json"
    common = ["--device", "cpu", "--out", str(out), "--sample-steps", "3", "--train-iters", "1",
              "--repeats", "1", "--quiet"]
    res = bench.main(common + ["--profile", str(tmp_path / "prof")])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"], default=str))
    meta = saved["meta"]
    assert meta["tiny"] and meta["network"] == "tiny" and meta["sample_steps"] == 3
    # the same network in both libraries
    assert meta["parameters"]["difflab"] == meta["parameters"]["diffusers"] > 0
    flops = meta["flops_per_image"]
    assert flops["difflab"]["train"] > 2 * flops["difflab"]["forward"] > 0  # backward ~ 2x forward
    assert flops["difflab"]["forward"] == pytest.approx(flops["diffusers"]["forward"], rel=0.05)

    rows = {(r["library"], r["what"], r["name"]): r for r in saved["rows"]}
    assert {(lib, what) for lib, what, _ in rows} == {(lib, what) for lib in ("difflab", "diffusers")
                                                      for what in ("train", "sample")}
    for key, r in rows.items():
        assert "error" not in r, (key, r.get("error"))
        assert r["images_per_s"] > 0 and r["ms_per_iteration"] > 0 and r["flops_per_image"] > 0, key
        assert r["achieved_tflops"] > 0 and r["vs_diffusers_best"] > 0
        assert r["mfu"] is None  # no bf16 peak for a CPU
        assert Path(r["profile"]["file"]).is_file() and r["profile"]["by_kind_ms"]
        if r["what"] == "train":
            assert r["final_loss"] > 0
        else:
            assert r["sample_finite"]
    # the same function whatever the layout: channels_last sampling matches the first (fp32) row
    assert rows[("difflab", "sample", "fp32")]["max_abs_diff_vs_first_row"] == 0.0
    assert rows[("difflab", "sample", "fp32+cl")]["max_abs_diff_vs_first_row"] < 1e-4
    cl = rows[("difflab", "sample", "fp32+cl")]
    assert cl["mean_abs_diff_vs_first_row"] <= cl["max_abs_diff_vs_first_row"]
    for what in ("train", "sample"):
        s = saved["summary"][what]
        assert s["diffusers_best"] == "fp32" and s["ratio"] > 0 and s["target_ratio"] == verdict.TARGETS[what]
        assert s["ratio"] == pytest.approx(s["difflab_images_per_s"] / s["diffusers_images_per_s"])
    assert "by kind" in (tmp_path / "prof" / "train-difflab-fp32.txt").read_text()
    names = [p.name for p in (tmp_path / "prof").iterdir()]  # "sample-difflab-fp32_cl.txt", not "+"
    assert "sample-difflab-fp32_cl.txt" in names and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    prof = saved["summary"]["train"]["profile"]  # the best rows side by side
    assert prof["ms_per_iteration"]["difflab"]["wall"] > 0
    assert "convolution" in prof["by_kind_ms_difflab_minus_diffusers"]

    # --report: the file as Markdown for docs/benchmarks.md
    bench.main(["--report", str(out)])
    md = capsys.readouterr().out
    assert "| sample | difflab | fp32+cl |" in md and "**tiny configuration" in md and "target 2.0x" in md
    assert "busy time by kind" in md

    # --merge: measure one row again, keep the others
    bench.main(common + ["--rows", "difflab/sample/fp32", "--no-diffusers", "--merge"])
    merged = json.loads(out.read_text())
    assert len(merged["rows"]) == len(saved["rows"]) and merged["summary"].keys() == saved["summary"].keys()
    # rows of another run are not divided by this run's references (another process, maybe another GPU)
    again = {(r["library"], r["what"], r["name"]): r for r in merged["rows"]}[("difflab", "sample", "fp32")]
    assert again["run"] != rows[("difflab", "sample", "fp32")]["run"] and again["vs_diffusers_best"] is None
    assert merged["meta"]["earlier_runs"][0]["command"] == saved["meta"]["command"]  # the first call's kept
    # a run named across calls (gpu_session.sh: one per machine lease) joins them
    monkeypatch.setenv("DIFFLAB_BENCH_RUN", rows[("difflab", "sample", "fp32")]["run"])
    bench.main(common + ["--rows", "difflab/sample/fp32", "--no-diffusers", "--merge"])
    joined = {(r["library"], r["what"], r["name"]): r for r in json.loads(out.read_text())["rows"]}
    assert joined[("difflab", "sample", "fp32")]["vs_diffusers_best"] > 0
    # no diffusers bf16 + compile in these CPU rows: ratios, but no verdict
    assert all(s.get("target_met") is None and "no_verdict" in s for s in merged["summary"].values())


def test_throughput_helpers():
    bench = load()
    assert env.detect_peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert env.detect_peak_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert env.detect_peak_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert env.detect_peak_tflops("Some Future GPU") is None
    gpu = row_table.row_specs(cpu=False)
    names = {(r["library"], r["what"], r["name"]) for r in gpu}
    assert len(names) == len(gpu)  # unique rows
    refs = {r["name"] for r in gpu if r["library"] == "diffusers" and r["reference"]}
    # the issue's reference configurations, and diffusers' network stored in bf16 for sampling
    # (its users' torch_dtype=torch.bfloat16), against which difflab's bf16-stored row is judged
    assert refs == {"fp32", "bf16", "bf16+compile", "bf16w+compile"}
    assert ("difflab", "sample", "bf16+cl+compile+graph") in names
    assert profiling._kind("triton_red_fused_native_group_norm_silu_3") == "fused (triton): norm"
    assert profiling._kind("_gn_looped") == profiling._kind("_gn_apply") == "GroupNorm (difflab triton)"
    assert profiling._kind("sm90_xmma_fprop_implicit_gemm_bf16") == "convolution"
    assert profiling._kind("void at::native::(anonymous)::multi_tensor_apply_kernel<FusedAdamW>") == "optimizer + EMA"
    assert profiling._kind("pytorch_flash::flash_fwd_kernel") == "attention"
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch", "0"])
    # a failed row dooms the rows that include all of its options (same library and kind)
    by = {(r["library"], r["what"], r["name"]): r for r in gpu}
    failed = [by[("difflab", "train", "bf16+fused+cl+compile_step+step_graph")]]
    doomed = {r["name"] for r in gpu if row_table.doomed_by(r, failed)}
    assert doomed == {"bf16+fused+cl+compile_step+step_graph", "bf16+fused+cl+compile_step+step_graph+no_ema",
                      "bf16+fused+cl+compile_step+step_graph+no_ema+gn_nhwc",
                      "bf16+fused+cl+compile_step+step_graph+no_ema+gn_nhwc+amb0.9"}
    assert not row_table.doomed_by(by[("difflab", "sample", "bf16+cl+compile+graph")], failed)
    canary = [by[("difflab", "train", "bf16+fused+step_graph")]]  # every captured training row includes it
    assert {r["name"] for r in gpu if row_table.doomed_by(r, canary)} == \
        {r["name"] for r in gpu if r["library"] == "difflab" and r["what"] == "train" and r["options"].get("cuda_graph")}


def test_rows_in_pattern_order_time_budget_and_missing(tmp_path, capsys):
    """The GPU session runs the rows that matter first, within a time budget, and the skipped
    ones in a later call: --rows order, --time-budget, --merge --missing, one profile file."""
    bench = load()
    specs = row_table.row_specs(cpu=False)
    key = lambda s: f"{s['library']}/{s['what']}/{s['name']}"  # noqa: E731
    order = [key(s) for s in row_table.select_rows(specs, ["difflab/sample/bf16+cl+compile+graph",
                                                       "diffusers/train/*", "*"])]
    assert order[0] == "difflab/sample/bf16+cl+compile+graph"
    assert order[1:5] == [key(s) for s in specs if key(s).startswith("diffusers/train/")]
    assert sorted(order) == sorted(map(key, specs))  # every row once

    out, prof = tmp_path / "t.json", tmp_path / "profile.txt"
    common = ["--device", "cpu", "--out", str(out), "--sample-steps", "2", "--train-iters", "1", "--repeats", "1",
              "--quiet", "--rows", "difflab/sample/fp32+cl", "diffusers/sample/fp32", "--profile", str(prof)]
    bench.main(common + ["--time-budget", "1e-3"])  # no row fits
    first = json.loads(out.read_text())
    assert first["rows"] == [] and [(r["library"], r["name"]) for r in first["meta"]["skipped"]] == [
        ("difflab", "fp32+cl"), ("diffusers", "fp32")]
    assert "budget" in first["meta"]["skipped"][0]["reason"]
    bench.main(["--report", str(out)])
    assert "not measured: sample difflab fp32+cl" in capsys.readouterr().out

    bench.main(common + ["--merge", "--missing", "--time-budget", "600"])
    second = json.loads(out.read_text())
    assert [(r["library"], r["name"]) for r in second["rows"]] == [("difflab", "fp32+cl"), ("diffusers", "fp32")]
    assert second["meta"]["skipped"] == [] and second["summary"]["sample"]["ratio"] > 0
    assert prof.read_text().count("by kind") == 2  # both rows' tables in the one file
    assert all(r["profile"]["file"] == str(prof) for r in second["rows"])

    bench.main(common + ["--merge", "--missing"])  # nothing missing: nothing measured, file untouched
    assert json.loads(out.read_text()) == second
    with pytest.raises(SystemExit):
        bench.parse_args(["--missing"])  # needs --merge
    with pytest.raises(SystemExit):
        bench.parse_args(["--time-budget", "0"])


def test_gpu_session_priority_names_real_rows():
    """benchmarks/gpu_session.sh orders the GPU call's rows by name: a misspelt name would
    silently fall to the end (the final '*'), so every name without a wildcard must be a row."""
    script = (REPO / "benchmarks" / "gpu_session.sh").read_text()
    block = re.search(r"^PRIORITY=\((.*?)\)$", script, re.S | re.M).group(1)
    names = re.findall(r"'([^']+)'", block)
    rows = {f"{r['library']}/{r['what']}/{r['name']}" for r in row_table.row_specs(cpu=False)}
    exact = [n for n in names if "*" not in n]
    assert len(exact) > 10 and len(set(exact)) == len(exact)
    assert [n for n in exact if n not in rows] == []
    assert names[-1] == "*"  # and every other row after them


def test_a_training_row_trains_with_its_group_norm_mode(monkeypatch):
    """A row's gn_nhwc reaches the Trainer, which swaps its network's GroupNorms to that mode:
    a "+gn_nhwc" training row times the NHWC view, not torch's kernel."""
    bench = load()
    from difflab.accel import group_norm

    calls = []
    real = group_norm.group_norm_nhwc
    monkeypatch.setattr(group_norm, "group_norm_nhwc", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_env = env.Env(bench.parse_args(["--device", "cpu", "--train-iters", "1", "--repeats", "1",
                                      "--train-warmup", "0"]))
    spec = {"library": "difflab", "what": "train", "name": "fp32+cl+gn_nhwc", "reference": False,
            "options": dict(precision="fp32", fused=False, channels_last=True, gn_nhwc="always")}
    flops = {"difflab": {"train": 1.0, "forward": 1.0}}
    row = measuring.measure(spec, run_env, flops)
    assert "error" not in row, row.get("error")
    assert calls  # the NHWC view computed the training steps' GroupNorms


def test_summary_meets_the_bar_only_with_speed_and_memory_in_one_row():
    """The issue's bar is one configuration at >= 1.5x diffusers' images/s and no more peak
    memory. The fastest row may hold more (the EMA copy); the fastest row within diffusers'
    memory is reported beside it and decides."""

    def row(lib, name, ips, mem, ref=False):
        return {"library": lib, "what": "train", "name": name, "reference": ref, "images_per_s": ips,
                "peak_mem_bytes": mem}

    ref = row("diffusers", "bf16+compile", 1000.0, 100, ref=True)
    fast_fat = row("difflab", "step_graph", 2000.0, 110)
    lean = row("difflab", "step_graph+no_ema", 1900.0, 95)
    s = verdict.summarize([ref, fast_fat, lean])["train"]
    assert s["difflab_best"] == "step_graph" and s["peak_mem_ratio"] == pytest.approx(1.1)
    assert s["difflab_best_within_memory"] == "step_graph+no_ema" and s["ratio_within_memory"] == pytest.approx(1.9)
    assert s["target_met"] is True
    assert "step_graph+no_ema 1.90x at 0.95x the memory" in report._within_memory(s)
    lean["images_per_s"] = 1400.0  # within memory but too slow; the fast row too fat: not met
    assert verdict.summarize([ref, fast_fat, lean])["train"]["target_met"] is False
    s = verdict.summarize([ref, fast_fat])["train"]  # no row within memory
    assert s["target_met"] is False and "difflab_best_within_memory" not in s


def test_peak_memory_is_each_rows_own():
    """A row's peak counts what it allocated, not what earlier rows left allocated: a later row
    must not be charged for them."""
    ref = {"library": "diffusers", "what": "train", "name": "bf16+compile", "reference": True,
           "images_per_s": 1000.0, "peak_mem_bytes": 3069, "allocated_before_bytes": 66}
    ours = {"library": "difflab", "what": "train", "name": "no_ema", "reference": False,
            "images_per_s": 1600.0, "peak_mem_bytes": 3400, "allocated_before_bytes": 462,
            "allocated_between_iterations_bytes": 1100}
    assert verdict.own_peak(ours) == 3400 - 462 and verdict.own_held(ours) == 1100 - 462
    s = verdict.summarize([ref, ours])["train"]
    assert s["peak_mem_ratio"] == pytest.approx((3400 - 462) / (3069 - 66))
    assert s["difflab_best_within_memory"] == "no_ema" and s["target_met"] is True
    ours["peak_mem_own_bytes"] = 3100  # measured directly (new rows) wins over the difference
    assert verdict.own_peak(ours) == 3100
    s = verdict.summarize([ref, ours])["train"]
    assert s["target_met"] is False and s["peak_mem_ratio"] == pytest.approx(3100 / 3003)
    assert verdict.own_peak({"images_per_s": 1.0}) is None  # CPU rows: no memory figures


def test_live_storages_count_each_storage_once():
    """What a row leaves behind or holds is read from the storages live tensors hold: a view and
    its base are one storage (run on CPU tensors here; the benchmark reads CUDA ones)."""
    base = torch.zeros(1000, 1000, dtype=torch.float64)  # 8,000,000 bytes
    view = base[:10]  # noqa: F841 - alive on purpose: the same storage
    mine = [s for s in memory._live_cuda_storages("cpu") if s[2] == 8_000_000]
    assert len(mine) == 1 and mine[0][1] == "float64"


def _row(lib, name, ips, mem, ref=False, run="r1", what="train", **extra):
    return {"library": lib, "what": what, "name": name, "reference": ref, "images_per_s": ips,
            "peak_mem_own_bytes": mem, "run": run, **extra}


def test_the_verdict_needs_the_issues_reference_in_the_same_run():
    """Without diffusers' bf16 + compile (failed, skipped) the best reference fell to its eager
    rows and 'target met' followed; rows of different runs (processes, machines) were divided
    by each other."""
    eager = _row("diffusers", "fp32", 600.0, 200, ref=True)
    ours = _row("difflab", "no_ema", 1600.0, 90)
    s = verdict.summarize([eager, ours])["train"]
    assert s["ratio"] == pytest.approx(1600 / 600) and s["target_met"] is None and "bf16+compile" in s["no_verdict"]
    compiled = _row("diffusers", "bf16+compile", 1000.0, 100, ref=True)
    assert verdict.summarize([eager, compiled, ours])["train"]["target_met"] is True
    # the same rows, the reference from another run: difflab's row there has no reference to divide by
    other = dict(compiled, run="r0")
    summary = verdict.summarize([dict(eager, run="r0"), other, ours])
    assert ours["vs_diffusers_best"] is None and "train" not in summary  # no difflab row in the judged run


def test_bf16_stored_rows_and_broken_samples_in_the_verdict():
    """A difflab row with its network stored in bf16 is held to diffusers' bf16-stored memory too
    (it would otherwise gain ~68 MiB of weights on a float32 reference), and a sample row with
    non-finite samples takes no part."""
    ref = _row("diffusers", "bf16+compile", 300.0, 700, ref=True, what="sample")
    ref_w = _row("diffusers", "bf16w+compile", 290.0, 640, ref=True, what="sample", options={"weights": "bf16"})
    ours_w = _row("difflab", "bf16w+loop", 650.0, 660, what="sample", options={"weights": "bf16"})
    ours = _row("difflab", "loop", 600.0, 690, what="sample")
    s = verdict.summarize([ref, ref_w, ours_w, ours])["sample"]
    assert s["difflab_best_within_memory"] == "loop"  # bf16w: 660 > diffusers' bf16w 640
    s = verdict.summarize([ref, ours_w, ours])["sample"]  # no bf16-stored reference measured: bf16w cannot count
    assert s["difflab_best_within_memory"] == "loop"
    ours_w["peak_mem_own_bytes"] = 630
    assert verdict.summarize([ref, ref_w, ours_w, ours])["sample"]["difflab_best_within_memory"] == "bf16w+loop"
    broken = _row("difflab", "fast_but_nan", 900.0, 100, what="sample", sample_finite=False)
    s = verdict.summarize([ref, ref_w, ours_w, ours, broken])["sample"]
    assert s["difflab_best"] == "bf16w+loop" and broken.get("vs_diffusers_best") is None


def test_merge_keeps_the_stored_rows_a_run_skips(tmp_path):
    """--merge without --missing dropped every stored row this run selected, measured or not: a
    time budget that skipped them all left an empty file."""
    bench = load()
    out = tmp_path / "t.json"
    common = ["--device", "cpu", "--out", str(out), "--sample-steps", "2", "--train-iters", "1", "--repeats", "1",
              "--quiet", "--rows", "difflab/train/fp32", "diffusers/train/fp32"]
    first = bench.main(common)
    assert len(first["rows"]) == 2
    bench.main(common + ["--merge", "--time-budget", "0.001"])  # everything skipped
    kept = json.loads(out.read_text())
    assert [r["name"] for r in kept["rows"]] == [r["name"] for r in first["rows"]]
    assert len(kept["meta"]["skipped"]) == 2 and kept["summary"]["train"]["ratio"] == first["summary"]["train"]["ratio"]



def test_the_issues_named_reference_is_reported_beside_the_stricter_verdict():
    """The verdict divides by diffusers' fastest reference of any kind (its network stored in bf16
    may be faster than the issue's bf16 autocast + compile); the issue's own comparison is
    reported beside it: difflab's fastest row within that reference's memory, and like for like
    (weights float32 under autocast on both sides)."""
    ref = _row("diffusers", "bf16+compile", 250.0, 600, ref=True, what="sample")
    ref_w = _row("diffusers", "bf16w+compile", 300.0, 500, ref=True, what="sample", options={"weights": "bf16"})
    ours_w = _row("difflab", "bf16w+loop", 520.0, 420, what="sample", options={"weights": "bf16"})
    ours = _row("difflab", "frozen+loop", 495.0, 500, what="sample")
    fat = _row("difflab", "fat", 560.0, 700, what="sample")  # faster, but over the memory
    s = verdict.summarize([ref, ref_w, ours_w, ours, fat])["sample"]
    assert s["ratio_within_memory"] == pytest.approx(520 / 300) and s["target_met"] is False
    named, alike = s["issue_reference"], s["issue_reference_like_for_like"]
    assert named["difflab"] == "bf16w+loop" and named["ratio"] == pytest.approx(520 / 250)
    assert named["peak_mem_ratio"] == pytest.approx(420 / 600) and named["target_met"] is True
    assert alike["difflab"] == "frozen+loop" and alike["ratio"] == pytest.approx(495 / 250)
    assert alike["target_met"] is False  # 1.98x
    text = report._issue_reference_text(s)
    assert "bf16w+loop 2.08x at 0.70x the memory (target met)" in text and "frozen+loop 1.98x" in text
    assert "issue_reference" not in verdict.summarize([ref_w, ours_w])["sample"]  # no named reference: none


def _speed_uses(source: str) -> list[str]:
    """The places in ``source`` that call difflab's sampler, pass a speed keyword, import the
    speed API, or name the environment variables that choose difflab's kernels (docstrings aside)."""
    tree = ast.parse(source)
    docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            func = n.func
            if isinstance(func, ast.Attribute) and func.attr == "sample" and getattr(func.value, "id", "") == "dl":
                found.append(f"line {n.lineno}: dl.sample")
            if getattr(func, "id", "") != "_row":  # (the row table: options, not calls)
                found += [f"line {n.lineno}: {k.arg}=" for k in n.keywords
                          if k.arg in ("precision", "channels_last", "compile", "cuda_graph", "group_norm")]
        elif isinstance(n, ast.ImportFrom) and n.module and ("samplers.fast" in n.module or "accel" in n.module
                                                             or n.module.endswith("norm")):
            found.append(f"line {n.lineno}: from {n.module}")
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs \
                and ("DIFFLAB_GN" in n.value or "DIFFLAB_UPSAMPLE" in n.value):
            found.append(f"line {n.lineno}: {n.value}")
    return found


def test_speed_options_and_their_environment_pass_through_one_module():
    """Every call that hands difflab a speed option, and every read of the variables that choose
    its kernels, is in throughput_lib/speed.py: a change of that API changes one file."""
    in_speed = " ".join(_speed_uses((REPO / "benchmarks" / "throughput_lib" / "speed.py").read_text()))
    assert "dl.sample" in in_speed  # (what the check finds)
    for path in [REPO / "benchmarks" / "throughput.py", *(REPO / "benchmarks" / "throughput_lib").glob("*.py")]:
        if path.name != "speed.py":
            assert _speed_uses(path.read_text()) == [], path.name
