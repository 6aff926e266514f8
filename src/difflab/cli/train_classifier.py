"""``difflab train-classifier``: train the small CNN whose penultimate layer is the offline feature space
of FID / precision / recall and whose predictions score conditional samples.

    difflab train-classifier --data mnist --root ../shared/data/mnist --out classifiers/mnist

MNIST: trained on ``t10k`` (the split the diffusion models train on) and tested on the held-out
``train5k``, so the FID floor (train5k against t10k) is measured exactly as samples are: against
images the feature network saw, with images it did not. ``digits`` (scikit-learn's 8x8 set, for
quick runs and tests) uses a fixed 80/20 split.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import data
from ..evaluation.classifier import save_classifier, train_classifier

__all__ = ["add_parser", "run_train_classifier", "load_split"]

DEFAULT_MNIST_ROOT = "../shared/data/mnist"


def load_split(name: str, root: str | None, split: str):
    """(images, labels) of a data set's split: MNIST's IDX splits by name, digits' fixed 80/20 split."""
    if name == "mnist":
        return data.load("mnist", root=root or DEFAULT_MNIST_ROOT, split=split)
    if name == "digits":
        if split not in ("train", "test"):
            raise ValueError(f"digits has the splits 'train' and 'test' (a fixed 80/20 split), got {split!r}")
        x, y = data.load("digits")
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(x))
        idx = order[:cut] if split == "train" else order[cut:]
        return x[idx], y[idx]
    raise ValueError(f"--data must be 'mnist' or 'digits' (labelled image sets), got {name!r}")


DEFAULT_SPLITS = {"mnist": ("t10k", "train5k"), "digits": ("train", "test")}


def run_train_classifier(
    dataset: str = "mnist",
    out: str | Path = "classifiers/mnist",
    root: str | None = None,
    train_split: str | None = None,
    test_split: str | None = None,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    limit: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Train, test, save; returns the record written to ``out/classifier.json``."""
    if dataset not in DEFAULT_SPLITS:
        raise ValueError(f"--data must be one of {', '.join(DEFAULT_SPLITS)}, got {dataset!r}")
    train_split = train_split or DEFAULT_SPLITS[dataset][0]
    test_split = test_split or DEFAULT_SPLITS[dataset][1]
    if test_split == train_split:
        raise ValueError(f"--test-split {test_split!r} is the training split: the test accuracy would not be "
                         "held out; choose another split")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1 training images, got {limit}")
    x, y = load_split(dataset, root, train_split)
    xt, yt = load_split(dataset, root, test_split)
    if limit is not None:  # a random subset: splits may be sorted by class (mnist's train5k is)
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:limit]
        x, y = x[keep], y[keep]
    model, record = train_classifier(
        x, y, test_images=xt, test_labels=yt, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        device=device, progress=progress,
    )
    meta = {"dataset": dataset, "train_split": train_split, "test_split": test_split,
            "image_shape": list(x.shape[1:]), "seed": seed, **record}
    save_classifier(model, out, meta)
    return meta


def add_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="train the small CNN used for offline FID, precision/recall and accuracy")
    p.add_argument("--data", default="mnist", choices=sorted(DEFAULT_SPLITS))
    p.add_argument("--root", default=None, help=f"MNIST folder (default: {DEFAULT_MNIST_ROOT})")
    p.add_argument("--out", default="classifiers/mnist", help="output folder (default: classifiers/mnist)")
    p.add_argument("--train-split", default=None, help="default: t10k for mnist, train for digits")
    p.add_argument("--test-split", default=None, help="default: train5k for mnist (held out), test for digits")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only N training images, drawn at random (quick runs)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from ..devices import resolve_device

    device = resolve_device(args.device, "--device")  # None: cuda when available
    meta = run_train_classifier(args.data, args.out, args.root, args.train_split, args.test_split, args.epochs,
                                args.batch_size, args.lr, args.seed, args.limit, str(device), not args.quiet)
    print(f"difflab train-classifier: {meta['dataset']} {meta['train_split']} ({meta['num_train']} images, "
          f"{meta['epochs']} epochs, {meta['train_seconds']:.0f} s)")
    print(f"test accuracy on {meta['test_split']} ({meta['num_test']} held-out images): {100 * meta['test_accuracy']:.2f}%")
    print(f"saved to {Path(args.out).resolve()} (classifier.safetensors, classifier.json)")
    print(json.dumps({"test_accuracy": meta["test_accuracy"]}))
    return 0
