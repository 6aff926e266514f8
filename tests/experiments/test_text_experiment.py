"""experiments/text.py --size tiny: its code path (the text run and its class-label control trained a
few steps, the class judge, prompts for the seen and held-out combinations at two guidance scales, as
one caption and composed of three, the control scored against the prompts); the numbers mean nothing here."""

import json

from difflab.training import TrainConfig, Trainer
from experiments import text
from latent_runs import autoencoder_run


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
    pairs = res["text"][-1]["held_out"]["by_pair"]
    assert set(pairs) == {"7 stroke bold", "2 stroke thin", "4 position right", "9 position top left"}
    assert sum(p["n"] for p in pairs.values()) == 44 and sum(pairs["7 stroke bold"]["classes_drawn"]) == 18
    assert res["control"]["n"] == 90 and res["judge"]["attributes_on_real"]["position"] == 1.0
    assert (out / "text_samples.png").stat().st_size > 0 and (out / "text_held_out_composed.png").stat().st_size > 0
    assert all(p.count(" AND ") == 2 for p in res["figure_held_out_composed_prompts"])
    # --text-run judges a finished digits run as it is (no training, no control); --guidances and
    # --no-composed narrow the sampling (a seed sweep's runs, each judged at w = 3)
    again = tmp_path / "again"
    assert text.main(["--size", "tiny", "--out", str(again), "--text-run", str(tmp_path / "runs" / "text"),
                      "--guidances", "3", "--no-composed", "--negative", "--threads", "1"]) == 0
    res = json.loads((again / "text_results.json").read_text())
    assert "control" not in res and res["steps"] == {"text": 6} and [r["guidance"] for r in res["text"]] == [3.0]
    assert set(res["text"][0]) == {"guidance", "seen", "held_out", "seen_negative", "held_out_negative"}
    assert res["text"][0]["held_out_negative"]["n"] == 44 and "by_pair" in res["text"][0]["held_out_negative"]
    negative = text.negatives_for([(7, "left", "bold"), (2, "top", "thin")], 1, 0)
    assert [text.cap.parse_caption(q)["stroke"] for q in negative] == ["thin", "bold"]
    assert all(text.cap.parse_caption(q)["position"] is None and text.cap.parse_caption(q)["digit"] is None
               for q in negative)


def test_text_tiny_judges_a_latent_mnist_run(tmp_path, mnist_dir):
    """--source mnist: a latent text run on captioned MNIST (here the fixture's, a tiny autoencoder and
    U-Net, two steps each) judged in position, stroke and size, held-out pairs with sizes among them."""
    ae = autoencoder_run(tmp_path / "ae", data={"name": "captioned_digits", "kwargs": {
        "n": 32, "labels": "digit", "source": "mnist", "root": str(mnist_dir), "mnist_split": "t10k"}})
    cfg = TrainConfig.from_dict({
        "model": {"name": "text_unet", "kwargs": {"in_channels": 2, "image_size": 24, "channels": 8,
                                                  "channel_mult": [1, 2], "num_res_blocks": 1, "norm_groups": 4,
                                                  "num_heads": 1, "max_length": 16, "text_width": 16, "text_depth": 0}},
        "latent": {"autoencoder": str(ae)}, "diffusion": {"schedule": "cosine", "T": 100, "prediction": "v"},
        "data": {"name": "captioned_digits", "kwargs": {"n": 1500, "source": "mnist", "root": str(mnist_dir),
                                                        "mnist_split": "t10k", "omit_prob": 0.3}},
        "optim": {"lr": 1e-3}, "sample": {"every": -1}, "batch_size": 8, "steps": 2, "ckpt_every": 2,
        "device": "cpu", "seed": 1, "cpu_threads": 1})
    with Trainer(cfg, tmp_path / "run", progress=False) as trainer:
        trainer.train()
    out = tmp_path / "out"
    assert text.main(["--size", "tiny", "--source", "mnist", "--text-run", str(tmp_path / "run"), "--data-root",
                      str(mnist_dir), "--out", str(out), "--threads", "1"]) == 0
    res = json.loads((out / "text_results.json").read_text())
    assert res["source"] == "mnist" and "control" not in res
    assert [5, "size", "small"] in res["combinations"]["held_out_pairs"]
    seen = res["text"][0]["seen_composed"]
    assert seen["n"] == 5 * 9 * 2 * 2 - res["combinations"]["held_out"] and {"size", "stroke", "position"} <= set(seen)
    assert all(p.count(" AND ") == 3 for p in res["figure_held_out_composed_prompts"])
