"""experiments/captioned_digits.py (docs/text.md's figures and numbers): the JSON's accuracies
are the library's measurement of the same data sets, and both sources' figures are written."""

import json

import imageio.v2 as imageio

from difflab.data import captioned as cap
from difflab.evaluation import attributes as attr
from experiments import captioned_digits


def test_writes_the_figures_and_the_measurements(tmp_path, mnist_dir):
    argv = ["--out", str(tmp_path), "--mnist", str(mnist_dir), "--n", "60", "--seed", "2", "--classifier-epochs", "1"]
    assert captioned_digits.main(argv) == 0
    for name in ("captioned_digits.png", "captioned_mnist.png"):
        picture = imageio.imread(tmp_path / name)
        assert picture.shape[0] > 400 and picture.shape[1] > 600
    res = json.loads((tmp_path / "captioned_digits.json").read_text())
    assert "--n 60" in res["command"]
    train = cap.captioned_digits(60, seed=2)
    want = attr.attribute_accuracy(train.images, train.attributes, train.layout)
    assert res["digits"]["accuracy"]["train"] == {k: round(v, 4) for k, v in want.items()}
    assert res["digits"]["held_out"] == [list(h) for h in cap.DEFAULT_HELD_OUT]
    for source in ("digits", "mnist"):
        entry = res[source]
        assert entry["examples"] == {"train": 60, "held_out": 60}
        assert min(entry["accuracy"]["held_out"].values()) >= 0.95
        stroke, size = entry["medians"]["stroke"], entry["medians"]["size"]
        assert stroke["thin"] < stroke["threshold"] < stroke["bold"] and size["small"] < size["threshold"] < size["large"]
        assert 0 <= entry["legibility"]["test_accuracy"] <= 1 and entry["legibility"]["epochs"] == 1
    assert res["mnist"]["legibility"]["test_source"] == "t10k"
