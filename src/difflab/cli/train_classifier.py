"""``difflab train-classifier``: train the small CNN whose penultimate layer is the offline feature space
of FID / precision / recall and whose predictions score conditional samples.

    difflab train-classifier --data mnist --root ../shared/data/mnist --out classifiers/mnist

MNIST: trained on ``t10k`` (the split the diffusion models train on) and tested on the held-out
``train5k``, so the FID floor (train5k against t10k) is measured exactly as samples are: against
images the feature network saw, with images it did not. ``digits`` (scikit-learn's 8x8 set, for
quick runs and tests) uses a fixed 80/20 split.

``--noisy --ckpt RUN`` trains instead the noise-aware classifier p(y | x_t, t) of a diffusion run, for
classifier guidance (Dhariwal & Nichol 2021): on the run's data, noised by the run's process
(:mod:`difflab.training.noisy_classifier`; resumable: the same command continues an interrupted run)::

    difflab train-classifier --noisy --ckpt runs/digits_uncond --out classifiers/digits_noisy --steps 3000
    difflab sample --ckpt runs/digits_uncond --classifier classifiers/digits_noisy --classifier-scale 4 --label all
"""

from __future__ import annotations

import json
from pathlib import Path

from ..devices import resolve_device
from ..evaluation.classifier import CLASSIFIER_SPLITS, train_and_save_classifier
from ..training.noisy_classifier import WEIGHTS_FILE, train_noisy_classifier

__all__ = ["add_parser"]

DEFAULT_MNIST_ROOT = "../shared/data/mnist"


def add_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="train the small CNN used for offline FID, precision/recall and "
                       "accuracy; with --noisy, a run's noise-aware classifier for classifier guidance")
    p.add_argument("--data", default="mnist", choices=sorted(CLASSIFIER_SPLITS))
    p.add_argument("--root", default=None, help=f"MNIST folder (default: {DEFAULT_MNIST_ROOT})")
    p.add_argument("--out", default=None, help="output folder (default: classifiers/mnist; with --noisy: required)")
    p.add_argument("--train-split", default=None, help="default: t10k for mnist, train for digits")
    p.add_argument("--test-split", default=None, help="default: train5k for mnist (held out), test for digits")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="default: 3e-3 (evaluation CNN), 1e-3 (--noisy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only N training images, drawn at random (quick runs)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    noisy = p.add_argument_group("noise-aware classifier (classifier guidance)")
    noisy.add_argument("--noisy", action="store_true", help="train the noise-aware classifier p(y | x_t, t) of --ckpt")
    noisy.add_argument("--ckpt", default=None, help="the diffusion run (folder, checkpoint or exported file) "
                       "whose data and process the classifier learns")
    noisy.add_argument("--steps", type=int, default=3000, help="optimizer steps (default: 3000)")
    noisy.add_argument("--width", type=int, default=128, help="network width (default: 128)")
    noisy.add_argument("--depth", type=int, default=2, help="blocks (flat data) or ResBlocks per level (images)")
    noisy.add_argument("--holdout", type=float, default=0.1, help="share of the data held out to report accuracy")
    noisy.add_argument("--ckpt-every", type=int, default=500, help="steps between saves (default: 500)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    if args.noisy or args.ckpt is not None:
        return _noisy(args)
    if args.out is None:
        args.out = "classifiers/mnist"
    args.lr = 3e-3 if args.lr is None else args.lr
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


def _noisy(args) -> int:
    """``--noisy --ckpt RUN --out DIR``: the run's noise-aware classifier."""
    if not args.noisy:
        raise ValueError("--ckpt names the diffusion run of a noise-aware classifier: add --noisy (the evaluation "
                         "classifier trains on --data alone)")
    if args.ckpt is None:
        raise ValueError("--noisy needs --ckpt RUN: the diffusion run whose data and process the classifier learns")
    if args.out is None:
        raise ValueError("--noisy needs --out DIR: the folder to keep the classifier in (and resume it from)")
    given = [flag for flag, value in (("--root", args.root), ("--train-split", args.train_split),
                                      ("--test-split", args.test_split), ("--limit", args.limit)) if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} choose the evaluation classifier's data; with --noisy the data is the "
                         "run's (its config): drop them")
    device = resolve_device(args.device, "--device") if args.device is not None else None
    info = train_noisy_classifier(args.ckpt, args.out, steps=args.steps, batch_size=args.batch_size,
                                  lr=1e-3 if args.lr is None else args.lr, width=args.width, depth=args.depth,
                                  seed=args.seed, holdout=args.holdout, ckpt_every=args.ckpt_every, device=device,
                                  progress=not args.quiet, log=print)
    print(f"difflab train-classifier --noisy: {info['data']} of {info['run']} under {info['process']}, step "
          f"{info['step']}, {info['num_classes']} classes, data shape {tuple(info['data_shape'])}")
    print(f"held-out accuracy by noise level (sigma: accuracy): {info['held_out_accuracy']}")
    print(f"saved to {(Path(args.out) / WEIGHTS_FILE).resolve()}")
    print(json.dumps({"held_out_accuracy": info["held_out_accuracy"]}))
    return 0
