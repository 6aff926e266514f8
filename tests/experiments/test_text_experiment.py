"""experiments/text.py --size tiny: its code path (the text run and its class-label control trained a
few steps, the class judge, prompts for the seen and held-out combinations at two guidance scales, as
one caption and composed of three, the control scored against the prompts); the numbers mean nothing here."""

import json

from experiments import text


def test_text_tiny_writes_the_tables(tmp_path):
    out = tmp_path / "out"
    assert text.main(["--size", "tiny", "--out", str(out), "--runs", str(tmp_path / "runs"), "--threads", "1"]) == 0
    res = json.loads((out / "text_results.json").read_text())
    assert res["steps"] == {"text": 6, "control": 6}
    assert res["combinations"] == {"seen": 68, "held_out": 22, "held_out_pairs": [
        [7, "stroke", "bold"], [2, "stroke", "thin"], [4, "position", "right"], [9, "position", "top left"]]}
    assert [row["guidance"] for row in res["text"]] == [1.0, 3.0]
    for row in res["text"]:
        for split, n in (("seen", 68), ("held_out", 44), ("seen_composed", 68), ("held_out_composed", 44)):
            r = row[split]
            assert r["n"] == n and all(0 <= r[k] <= 1 for k in ("class", "position", "stroke", "all"))
            assert r["all"] <= min(r["class"], r["position"], r["stroke"])
    assert res["control"]["n"] == 90 and res["judge"]["attributes_on_real"]["position"] == 1.0
    assert (out / "text_samples.png").stat().st_size > 0 and (out / "text_held_out_composed.png").stat().st_size > 0
    assert all(p.count(" AND ") == 2 for p in res["figure_held_out_composed_prompts"])
