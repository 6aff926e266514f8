"""A small CNN classifier for a dataset of images: its test accuracy, its labels for conditional
samples, and its penultimate layer as the feature space of FID and precision/recall when the
Inception network is not at hand ("FID (mnist-cnn features)", never to be read as Inception FID).

    conv3x3(32) - conv3x3(32) - maxpool - conv3x3(64) - conv3x3(64) - maxpool
    - adaptive avgpool 4x4 - linear(128) = features - dropout - linear(num_classes) = logits

Trained with AdamW, a one-cycle learning rate, and random shifts of up to 2 pixels (1 for tiny images).
Saved as ``classifier.safetensors`` + ``classifier.json`` (architecture, dataset, accuracy).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import data
from ..files import atomic_write_bytes

__all__ = ["SmallCNN", "train_classifier", "accuracy", "save_classifier", "load_classifier", "ClassifierFeatures",
           "AtResolution", "CLASSIFIER_SPLITS", "load_split", "train_and_save_classifier"]


class SmallCNN(nn.Module):
    """Image classifier for [B, C, H, W] images in [-1, 1]; ``features(x)`` is its [B, feature_dim] penultimate layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, width=width, feature_dim=feature_dim)
        self.num_classes = num_classes
        self.in_channels = in_channels
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * w * 16, feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"the classifier takes images [B, {self.in_channels}, H, W] in [-1, 1], "
                f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )

    def features(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


def _shift(x: Tensor, max_shift: int, g: torch.Generator) -> Tensor:
    """Random translation by up to max_shift pixels per image (pad with the background -1, crop)."""
    if max_shift <= 0:
        return x
    B, _, H, W = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=g)
    rows = (dy[:, None] + torch.arange(H)[None]).to(x.device)  # [B, H]
    cols = (dx[:, None] + torch.arange(W)[None]).to(x.device)  # [B, W]
    idx_b = torch.arange(B, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` whose argmax class is ``labels`` (integers [N])."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need one integer label per image, labels [N] with N = {len(images)} > 0; got "
                         f"{len(images)} images and labels of shape {tuple(labels.shape)}")
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        pred = model(images[i : i + batch_size].to(device)).argmax(1).cpu()
        correct += int((pred == labels[i : i + batch_size].cpu()).sum())
    return correct / len(images)


def train_classifier(
    images: Tensor,
    labels: Tensor,
    *,
    test_images: Optional[Tensor] = None,
    test_labels: Optional[Tensor] = None,
    num_classes: Optional[int] = None,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 3e-3,
    max_shift: Optional[int] = None,
    width: int = 32,
    seed: int = 0,
    device: Optional[str] = None,
    progress: bool = False,
) -> tuple[SmallCNN, dict]:
    """Train a :class:`SmallCNN` on ``images`` [N, C, H, W] in [-1, 1] with integer ``labels`` [N].

    Returns the model (in eval mode, on the CPU) and a record with the training time, the final
    training loss and, when test data are given, ``test_accuracy``.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a tensor [N, C, H, W], got {getattr(images, 'shape', type(images).__name__)}")
    labels = torch.as_tensor(labels).long()
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape [{len(images)}], got {tuple(labels.shape)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if test_labels is not None:
        test_labels = torch.as_tensor(test_labels).long()
        if test_images is None or test_labels.shape != (len(test_images),):
            raise ValueError(f"test_labels must have shape [{len(test_images) if test_images is not None else 'N'}] "
                             f"(one per test image), got {tuple(test_labels.shape)}")
    if len(labels) == 0:
        raise ValueError("no training images")
    # the classes of all labels given, not the training labels' alone (a subset may lack the last)
    every = labels if test_labels is None else torch.cat([labels, test_labels])
    lo, hi = int(every.min()), int(every.max())
    num_classes = num_classes or hi + 1
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in 0 .. num_classes - 1 = {num_classes - 1}, got values in [{lo}, {hi}]")
    if max_shift is None:  # 2 pixels for 28x28 digits, 1 for 8x8 ones
        max_shift = max(1, images.shape[-1] // 14)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = SmallCNN(images.shape[1], num_classes, width).to(device)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc="classifier", unit="step")
    losses = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            x = _shift(images[idx], max_shift, g).to(device)
            loss = F.cross_entropy(model(x), labels[idx].to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the classifier's loss became {loss.item()}; lower lr (now {lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.set_postfix(loss=f"{sum(losses[-steps_per_epoch:]) / steps_per_epoch:.4f}")
    if bar is not None:
        bar.close()
    model = model.cpu().eval()
    record = {
        "train_seconds": time.perf_counter() - start,
        "train_loss": sum(losses[-steps_per_epoch:]) / len(losses[-steps_per_epoch:]),
        "epochs": epochs,
        "num_train": len(images),
    }
    if test_images is not None and test_labels is not None:
        record["test_accuracy"] = accuracy(model, test_images, torch.as_tensor(test_labels))
        record["num_test"] = len(test_images)
    return model, record


def save_classifier(model: SmallCNN, directory, meta: Optional[dict] = None) -> Path:
    """Write ``classifier.safetensors`` and ``classifier.json`` (architecture + ``meta``) into ``directory``."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / "classifier.safetensors", save(state))
    info = {"architecture": "SmallCNN", "config": model.config, **(meta or {})}
    atomic_write_bytes(directory / "classifier.json", (json.dumps(info, indent=2) + "\n").encode())
    return directory


# (train split, held-out test split) of each labelled data set. MNIST: trained on t10k (the split
# the diffusion models train on), tested on the held-out train5k, so the FID floor (train5k against
# t10k) is measured exactly as samples are. digits: a fixed 80/20 split of scikit-learn's 8x8 set.
CLASSIFIER_SPLITS = {"mnist": ("t10k", "train5k"), "digits": ("train", "test")}


def load_split(name: str, root, split: str) -> tuple[Tensor, Tensor]:
    """(images, labels) of a labelled data set's split: MNIST's IDX splits by name from the folder
    ``root``, digits' fixed 80/20 split (``root`` unused)."""
    if name == "mnist":
        if root is None:
            raise ValueError("mnist needs root, the folder of its IDX files (e.g. ../shared/data/mnist)")
        return data.load("mnist", root=root, split=split)
    if name == "digits":
        if split not in ("train", "test"):
            raise ValueError(f"digits has the splits 'train' and 'test' (a fixed 80/20 split), got {split!r}")
        x, y = data.load("digits")
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(x))
        idx = order[:cut] if split == "train" else order[cut:]
        return x[idx], y[idx]
    raise ValueError(f"--data must be 'mnist' or 'digits' (labelled image sets), got {name!r}")


def train_and_save_classifier(
    dataset: str = "mnist",
    out="classifiers/mnist",
    root=None,
    train_split: Optional[str] = None,
    test_split: Optional[str] = None,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    limit: Optional[int] = None,
    device: Optional[str] = None,
    progress: bool = True,
) -> dict:
    """Train the classifier of a labelled data set (``CLASSIFIER_SPLITS``) on its training split,
    test it on the held-out one, save it into ``out`` (:func:`save_classifier`); returns the record
    written to ``out/classifier.json``. ``limit``: train on that many random training images."""
    if dataset not in CLASSIFIER_SPLITS:
        raise ValueError(f"--data must be one of {', '.join(CLASSIFIER_SPLITS)}, got {dataset!r}")
    train_split = train_split or CLASSIFIER_SPLITS[dataset][0]
    test_split = test_split or CLASSIFIER_SPLITS[dataset][1]
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


def load_classifier(directory) -> SmallCNN:
    """The classifier saved in ``directory`` by :func:`save_classifier` (``.meta`` holds its json), in eval mode."""
    from safetensors.torch import load_file

    directory = Path(directory)
    weights, info_path = directory / "classifier.safetensors", directory / "classifier.json"
    if not weights.is_file() or not info_path.is_file():
        raise FileNotFoundError(
            f"no classifier in {directory} (need classifier.safetensors and classifier.json); "
            "make one with `difflab train-classifier --data mnist --out DIR`"
        )
    again = "train it again with `difflab train-classifier`"
    try:
        info = json.loads(info_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(info_path)!r} is damaged: not valid JSON ({err}); {again}") from None
    config = info.get("config") if isinstance(info, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{str(info_path)!r} is damaged: no 'config' mapping (the network's architecture); {again}")
    try:
        model = SmallCNN(**config)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{str(info_path)!r} is damaged: its 'config' {config} does not build the classifier "
                         f"({err}); {again}") from None
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors' own error type: a damaged header or data
        raise ValueError(f"{str(weights)!r} is damaged: not a readable safetensors file ({err}); {again}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(f"{str(weights)!r} does not match the classifier {str(info_path)!r} describes "
                         f"({detail}): the two files come from different classifiers or one is damaged; "
                         f"{again}") from None
    model.meta = info
    return model.eval()


class ClassifierFeatures(nn.Module):
    """A classifier's penultimate layer as a feature network: images [B, C, H, W] in [-1, 1] -> [B, d] float64.

    Has ``num_features`` (what torchmetrics' FrechetInceptionDistance reads) and ``name``, used in
    every metric's label ("FID (mnist-cnn features)").
    """

    def __init__(self, classifier: SmallCNN, name: Optional[str] = None) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = int(classifier.config["feature_dim"])
        meta = getattr(classifier, "meta", {}) or {}
        self.name = name or f"{meta.get('dataset', 'custom')}-cnn"

    def train(self, mode: bool = True) -> "ClassifierFeatures":  # a fixed feature space: always eval
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images.to(torch.float32)).to(torch.float64)


class AtResolution(nn.Module):
    """A classifier trained at ``size`` x ``size`` applied to images of another size, resized
    bilinearly first (e.g. 14x14 samples of a reduced-size model judged by the 28x28 MNIST CNN).
    Real and generated images pass through the same resize, so their features stay comparable."""

    def __init__(self, classifier: nn.Module, size: int = 28) -> None:
        super().__init__()
        self.inner, self.size = classifier, size
        self.config = getattr(classifier, "config", None)
        self.meta = getattr(classifier, "meta", {})
        self.num_classes = classifier.num_classes

    def _resize(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def features(self, x: Tensor) -> Tensor:
        return self.inner.features(self._resize(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(self._resize(x))
