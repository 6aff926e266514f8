"""benchmarks/sampler_quality.py: the smoke test of its whole table."""

import math

FAST = ["dpmpp_2m", "dpmpp_3m", "euler", "heun"]


def test_sampler_quality_benchmark_quick(tmp_path):
    """benchmarks/sampler_quality.py --quick: the whole table's code path on few samples."""
    import json

    from scripts import load_script

    bench = load_script("benchmarks/sampler_quality.py")
    res = bench.main(["--quick", "--out", str(tmp_path), "--quiet", "--n", "200"])
    for suffix in ("md", "json", "png"):
        assert (tmp_path / f"sampler_quality.{suffix}").stat().st_size > 0
    rows = json.loads((tmp_path / "sampler_quality.json").read_text())["rows"]
    assert {r["problem"] for r in rows} == {"2d", "64d"}
    ours = [r for r in rows if r["library"] == "difflab"]
    assert {r["method"] for r in ours} >= set(FAST) and all(math.isfinite(r["fd"]) for r in ours)
    # the NFE column counts network calls: Heun makes 2 * steps - 1
    assert {(r["method"], r["nfe_target"], r["nfe"]) for r in ours if r["method"] == "heun"} == {
        ("heun", 5, 5),
        ("heun", 10, 9),
    }
    assert "Headline" in (tmp_path / "sampler_quality.md").read_text()
    assert len(res["rows"]) == len(rows)
