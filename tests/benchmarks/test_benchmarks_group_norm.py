"""benchmarks/group_norm.py on the CPU: the U-Net's GroupNorm shapes, every variant timed and
checked against torch's kernel (the Triton kernels in the interpreter), JSON written."""

import json

import pytest

from scripts import load_script

from difflab.models.norm import GroupNorm
from difflab.models.unet import UNet

pytest.importorskip("triton")


def load():
    return load_script("benchmarks/group_norm.py")


def test_shapes_are_read_off_the_network():
    bench = load()
    shapes = bench.norm_shapes(bench.NETWORKS["ddpm_cifar10"], 4)
    net = UNet(in_channels=3, **bench.NETWORKS["ddpm_cifar10"])
    assert sum(shapes.values()) == sum(isinstance(m, GroupNorm) for m in net.modules())  # each called once
    assert shapes[(128, 32, 32, 32)] >= 4 and (384, 32, 32, 32) in shapes  # first level; the up path's concat
    assert all(c % g == 0 for c, _, _, g in shapes)


def test_cpu_run_times_and_checks_every_variant(tmp_path, monkeypatch):
    from difflab.accel import group_norm_triton as gnt

    bench = load()
    out = tmp_path / "gn.json"
    chosen, real = set(), gnt.choose_kernels
    monkeypatch.setattr(gnt, "choose_kernels", lambda *a: chosen.add(a[4]) or real(*a))
    res = bench.main(["--device", "cpu", "--tiny", "--no-compile", "--iters", "1", "--repeats", "1",
                      "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    variants = {r["variant"] for r in res["rows"]}
    assert variants == {"eager_nchw", "eager_nhwc", "triton_tiled", "triton_looped", "triton_resident",
                        "triton_resident2", "triton_auto"}
    assert bench.WAYS == gnt.KERNELS  # the ways the plan may pick are the kernels' own
    assert chosen == {None, *gnt.KERNELS}  # each triton_ variant by its own kernels, triton_auto by the rule
    shapes = bench.norm_shapes(bench.NETWORKS["tiny"], 2)
    assert len(res["rows"]) == 7 * len(shapes)
    for r in res["rows"]:
        assert "error" not in r, r
        assert r["us_per_call"] > 0 and r["effective_gbps"] > 0 and r["fraction_of_peak"] is None
        assert r["max_abs_diff"] < 1e-5, r  # float32 on the CPU: the same function
        # the Triton ways are also checked with the time embedding added (norm2's specialization)
        assert ("max_abs_diff_fused" in r) == r["variant"].startswith("triton_")
        assert r.get("max_abs_diff_fused", 0.0) < 1e-5, r
    calls = sum(shapes.values())
    for v, t in res["totals"].items():
        per_call = [r["us_per_call"] for r in res["rows"] if r["variant"] == v]
        assert min(per_call) * calls / 1e3 <= t["ms_per_forward"] * (1 + 1e-9) <= max(per_call) * calls / 1e3 * (1 + 1e-9)
        assert t["ms_per_sampled_batch"] == pytest.approx(50 * t["ms_per_forward"])


def test_variants_subset_and_the_faster_kernel(tmp_path, capsys):
    """--variants keeps the reference and the named ones; --faster-kernel reads a result back
    and names the Triton kernels with the shorter forward pass (what gpu_session.sh exports
    as DIFFLAB_GN_KERNEL), of those that match torch's kernel at every shape."""
    bench = load()
    out = tmp_path / "gn.json"
    res = bench.main(["--device", "cpu", "--tiny", "--no-compile", "--iters", "1", "--repeats", "1",
                      "--variants", "triton_tiled", "triton_looped", "--out", str(out)])
    assert {r["variant"] for r in res["rows"]} == {"eager_nchw", "triton_tiled", "triton_looped"}
    capsys.readouterr()
    for fast, slow in (("tiled", "looped"), ("looped", "tiled")):
        res["totals"][f"triton_{fast}"]["ms_per_forward"] = 1.0
        res["totals"][f"triton_{slow}"]["ms_per_forward"] = 2.0
        out.write_text(json.dumps(res))
        assert bench.main(["--faster-kernel", str(out)]) == {"faster_kernel": fast}
        assert capsys.readouterr().out.strip() == fast
    res_auto = bench.main(["--device", "cpu", "--tiny", "--no-compile", "--iters", "1", "--repeats", "1",
                           "--variants", "triton_auto", "triton_looped", "--out", str(out)])
    res_auto["totals"]["triton_auto"]["ms_per_forward"] = 1.0  # choose_kernels' rule fastest: DIFFLAB_GN_KERNEL unset
    res_auto["totals"]["triton_looped"]["ms_per_forward"] = 1.5
    assert bench.faster_kernel(res_auto) == "auto"
    res_auto["totals"]["triton_looped"]["ms_per_forward"] = 0.5
    assert bench.faster_kernel(res_auto) == "looped"
    res["totals"]["triton_tiled"]["ms_per_forward"] = 1.0  # faster, but wrong at one shape: not chosen
    res["totals"]["triton_looped"]["ms_per_forward"] = 2.0
    next(r for r in res["rows"] if r["variant"] == "triton_tiled")["max_abs_diff"] = 1.0
    out.write_text(json.dumps(res))
    assert bench.main(["--faster-kernel", str(out)]) == {"faster_kernel": "looped"}
    for r in res["rows"]:
        r["max_abs_diff"] = 1.0
    with pytest.raises(ValueError, match="no complete and correct timing"):
        bench.faster_kernel(res)
    with pytest.raises(SystemExit, match="no variant"):
        bench.main(["--device", "cpu", "--tiny", "--no-compile", "--variants", "triton"])


def test_best_per_shape_is_the_fastest_correct_way_at_each_shape(tmp_path):
    """--best-per-shape: per shape, the Triton way (tiled, looped, resident) with the shortest call
    among those that match torch's kernel there -- the table DIFFLAB_GN_PLAN loads."""
    bench = load()

    def row(shape, variant, us, diff=0.01):
        return {"shape": list(shape), "groups": 32, "variant": variant, "us_per_call": us, "max_abs_diff": diff}

    res = {"rows": [row((128, 32, 32), "eager_nchw", 5.0), row((128, 32, 32), "triton_tiled", 60.0),
                    row((128, 32, 32), "triton_looped", 46.0), row((128, 32, 32), "triton_resident", 30.0, diff=1.0),
                    row((384, 16, 16), "triton_tiled", 26.0), row((384, 16, 16), "triton_looped", 32.5),
                    row((384, 16, 16), "triton_auto", 1.0)]}
    assert bench.best_per_shape(res) == {"128,32,1024": "looped", "384,32,256": "tiled"}  # resident: wrong there
    src, plan = tmp_path / "gn.json", tmp_path / "plan.json"
    src.write_text(json.dumps(res))
    assert bench.main(["--best-per-shape", str(src), str(plan)]) == {"plan": {"128,32,1024": "looped",
                                                                              "384,32,256": "tiled"}}
    from difflab.accel import group_norm_triton as gnt

    assert gnt.load_plan(plan) == {(128, 32, 1024): "looped", (384, 32, 256): "tiled"}
    with pytest.raises(ValueError, match="no correct timing"):
        bench.best_per_shape({"rows": [row((128, 32, 32), "triton_tiled", 1.0, diff=9.0)]})
    # a NaN output (nan > 0.25 is False) and a way wrong only with the embedding added are not correct
    nan, fused_wrong = row((128, 32, 32), "triton_resident2", 20.0, diff=float("nan")), row((128, 32, 32),
                                                                                             "triton_resident", 25.0)
    fused_wrong["max_abs_diff_fused"] = 3.0
    assert bench.best_per_shape({"rows": [nan, fused_wrong, row((128, 32, 32), "triton_looped", 50.0)]}) == {
        "128,32,1024": "looped"}
