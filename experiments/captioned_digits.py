"""The captioned-digits figures and measurements of docs/text.md (not part of the difflab package).

    python experiments/captioned_digits.py --out docs/text                                # 1 minute, CPU
    python experiments/captioned_digits.py --out docs/text --mnist ../shared/data/mnist   # 5 minutes

Writes ``captioned_digits.png`` (examples of the training split and of the held-out split, each
with its caption; ``captioned_mnist.png`` too with ``--mnist``) and ``captioned_digits.json``:
how often difflab.evaluation.attributes reads each attribute back from the pixels (on each
split, and under Gaussian noise like a sample's grain), the measurements' medians against their
thresholds (the margins), and how legible the digits' class is to difflab's small CNN trained
on other renderings of the training split (``--no-classifier`` skips it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
if __package__ in (None, "") and sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a script: import from the repository root

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from difflab.data import captioned as cap  # noqa: E402
from difflab.evaluation import attributes as attr  # noqa: E402
from difflab.evaluation.classifier import train_classifier  # noqa: E402
from difflab.files import atomic_write, atomic_write_text  # noqa: E402

NOISE = 0.1  # std of the Gaussian noise added to [-1, 1] images for the robustness row
# The class-legibility classifier: renderings of each source digit it trains on, and epochs.
CLASSIFIER = {"digits": (5, 20), "mnist": (2, 10)}


def figure(sets: Sequence[tuple[str, cap.CaptionedDigits]], path: Path, columns: int = 6, rows: int = 2) -> None:
    """``rows`` rows of ``columns`` examples from each data set, every image above its caption."""
    n_rows = rows * len(sets)
    fig, axes = plt.subplots(n_rows, columns, figsize=(1.75 * columns, 2.05 * n_rows))
    for s, (title, ds) in enumerate(sets):
        for r in range(rows):
            for c in range(columns):
                i = r * columns + c
                ax = axes[s * rows + r, c]
                ax.imshow(ds.images[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_xlabel("\n".join(textwrap.wrap(ds.captions[i], 22)), fontsize=7)
        axes[s * rows, 0].set_ylabel(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def margins(ds: cap.CaptionedDigits) -> dict:
    """Each measurement's median on either side of its threshold (pixels)."""
    m = attr.measure_attributes(ds.images, ds.layout)
    t = attr.thresholds(ds.layout)
    out = {}
    for name, value in (("stroke", m["width"]), ("size", m["extent"] - m["width"])):
        if name in ds.attributes:
            codes = ds.attributes[name]
            out[name] = {"threshold": round(t[name], 3),
                         **{v: round(float(value[codes == k].median()), 3) for k, v in enumerate(cap.ATTRIBUTES[name])}}
    return out


def recovery(train: cap.CaptionedDigits, held: cap.CaptionedDigits, seed: int) -> dict:
    noise = torch.randn(train.images.shape, generator=torch.Generator().manual_seed(seed))
    rounded = {}
    for name, (images, ds) in {"train": (train.images, train), "held_out": (held.images, held),
                               f"train_noise_{NOISE}": ((train.images + NOISE * noise).clamp(-1, 1), train)}.items():
        rounded[name] = {k: round(v, 4) for k, v in attr.attribute_accuracy(images, ds.attributes, ds.layout).items()}
    return rounded


def legibility(train: cap.CaptionedDigits, test: cap.CaptionedDigits, epochs: int, seed: int) -> dict:
    """difflab's small CNN trained on renderings of the training split, tested on others."""
    _, record = train_classifier(train.images, train.digits, test_images=test.images, test_labels=test.digits,
                                 num_classes=10, epochs=epochs, seed=seed)
    return {"test_accuracy": round(record["test_accuracy"], 4), "train_examples": len(train),
            "epochs": epochs, "test_examples": len(test)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/text"))
    parser.add_argument("--mnist", type=Path, default=None, help="MNIST's folder (train5k and t10k IDX files)")
    parser.add_argument("--n", type=int, default=None, help="examples a split (default: one per source digit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-classifier", action="store_true", help="skip the class-legibility measurement")
    parser.add_argument("--classifier-epochs", type=int, default=None, help="default: CLASSIFIER's")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    res: dict = {"command": "python experiments/captioned_digits.py "
                 + shlex.join(argv if argv is not None else sys.argv[1:])}
    sources = [("digits", {}, {})]
    if args.mnist is not None:
        sources.append(("mnist", {"root": args.mnist, "mnist_split": "train5k"},
                        {"root": args.mnist, "mnist_split": "t10k"}))
    for source, kw, test_kw in sources:
        train = cap.captioned_digits(args.n, source=source, seed=args.seed, **kw)
        held = cap.captioned_digits(args.n, source=source, seed=args.seed, split="held_out", **kw)
        name = "captioned_digits.png" if source == "digits" else "captioned_mnist.png"
        figure([("training split", train), ("held-out split", held)], args.out / name)
        layout = train.layout
        entry = {"layout": {"canvas": layout.canvas, "extents": list(layout.extents), "widths": list(layout.widths)},
                 "examples": {"train": len(train), "held_out": len(held)},
                 "held_out": [list(h) for h in train.held_out],
                 "accuracy": recovery(train, held, args.seed), "medians": margins(train)}
        if not args.no_classifier:
            # trained on several renderings of each training digit; tested on MNIST's t10k, or for
            # the 8x8 digits (one split) on other renderings of the same digits (another seed)
            renderings, epochs = CLASSIFIER[source]
            n = args.n or renderings * len(train)
            fit = cap.captioned_digits(n, source=source, seed=args.seed + 2, **kw)
            test = cap.captioned_digits(args.n, source=source, seed=args.seed + 1, **(test_kw or kw))
            entry["legibility"] = legibility(fit, test, args.classifier_epochs or epochs, args.seed)
            entry["legibility"]["test_source"] = "t10k" if test_kw else "the same digits, seed + 1"
        res[source] = entry
    atomic_write_text(args.out / "captioned_digits.json", json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
