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

from ..devices import resolve_device
from ..evaluation.classifier import CLASSIFIER_SPLITS, train_and_save_classifier

__all__ = ["add_parser"]

DEFAULT_MNIST_ROOT = "../shared/data/mnist"


def add_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="train the small CNN used for offline FID, precision/recall and accuracy")
    p.add_argument("--data", default="mnist", choices=sorted(CLASSIFIER_SPLITS))
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
    device = resolve_device(args.device, "--device")  # None: cuda when available
    root = args.root or (DEFAULT_MNIST_ROOT if args.data == "mnist" else None)
    meta = train_and_save_classifier(args.data, args.out, root, args.train_split, args.test_split, args.epochs,
                                     args.batch_size, args.lr, args.seed, args.limit, str(device), not args.quiet)
    print(f"difflab train-classifier: {meta['dataset']} {meta['train_split']} ({meta['num_train']} images, "
          f"{meta['epochs']} epochs, {meta['train_seconds']:.0f} s)")
    print(f"test accuracy on {meta['test_split']} ({meta['num_test']} held-out images): {100 * meta['test_accuracy']:.2f}%")
    print(f"saved to {Path(args.out).resolve()} (classifier.safetensors, classifier.json)")
    print(json.dumps({"test_accuracy": meta["test_accuracy"]}))
    return 0
