"""Frechet distance between the feature statistics of two image sets (Heusel et al. 2017):

    FID = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

computed by torchmetrics' FrechetInceptionDistance with a feature network of our choice:

* ``inception_features(weights)``: Inception-v3 pool features (2048-d), the FID of the literature;
  needs the optional package torch-fidelity and its weights (a path, or a download);
* ``ClassifierFeatures(load_classifier(dir))``: the penultimate layer of a small CNN trained on
  the dataset (``difflab train-classifier``), for offline work. Its numbers are not Inception FIDs,
  so every label names the features: :func:`metric_name` gives "FID (mnist-cnn features)".
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..validation import is_int

__all__ = ["fid", "frechet_distance", "extract_features", "inception_features", "metric_name"]


def metric_name(features: Union[nn.Module, str], metric: str = "FID") -> str:
    """``"FID (mnist-cnn features)"``: the metric's name with the feature space it was computed in."""
    name = features if isinstance(features, str) else getattr(features, "name", type(features).__name__)
    return f"{metric} ({name} features)"


def _num_features(net: nn.Module) -> int:
    n = getattr(net, "num_features", None)
    if not is_int(n) or n < 1:
        raise TypeError(
            f"the feature network must have an integer attribute num_features (its output width), "
            f"got {type(net).__name__} with num_features={n!r}"
        )
    return int(n)


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, batch_size: int = 500, device=None) -> Tensor:
    """net(images) in batches on ``device`` (default: where the network is): [N, num_features] float64 on the CPU."""
    if not isinstance(images, Tensor) or images.ndim < 2 or len(images) == 0:
        raise ValueError(f"images must be a non-empty batch tensor, got {getattr(images, 'shape', type(images).__name__)}")
    if device is not None:
        net = net.to(device)
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    out = [net(images[i : i + batch_size].to(device)).to(torch.float64).cpu() for i in range(0, len(images), batch_size)]
    feats = torch.cat(out)
    if feats.ndim != 2 or feats.shape[1] != _num_features(net):
        raise ValueError(f"the feature network returned shape {tuple(feats.shape)}, expected [N, {net.num_features}]")
    return feats


class _Precomputed(nn.Module):
    """Feature 'network' for features already extracted: the identity, with torchmetrics' num_features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _torchmetrics_fid(feature: nn.Module):
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:  # a core dependency; only a broken install gets here
        raise ModuleNotFoundError("FID needs torchmetrics: pip install torchmetrics") from err
    metric = FrechetInceptionDistance(feature=feature, reset_real_features=False, normalize=True)
    return metric


def frechet_distance(real_features: Tensor, fake_features: Tensor) -> float:
    """FID between two sets of feature vectors [N, d] (torchmetrics' statistics and matrix square root)."""
    real = torch.as_tensor(real_features).to(torch.float64)
    fake = torch.as_tensor(fake_features).to(torch.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real_features and fake_features must be [N, d] with the same d, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 vectors in each set, got {len(real)} and {len(fake)}")
    metric = _torchmetrics_fid(_Precomputed(real.shape[1]))
    for i in range(0, len(real), 4096):
        metric.update(real[i : i + 4096], real=True)
    for i in range(0, len(fake), 4096):
        metric.update(fake[i : i + 4096], real=False)
    return max(float(metric.compute()), 0.0)


@torch.no_grad()
def fid(real: Tensor, fake: Tensor, features: nn.Module, batch_size: int = 500) -> float:
    """FID between two image sets [N, C, H, W] in [-1, 1] in the space of ``features``
    (a module with ``num_features``, e.g. ClassifierFeatures or inception_features()). The images
    go to the network's device batch by batch; the statistics are float64 on the CPU."""
    _num_features(features)
    for images, name in ((real, "real"), (fake, "fake")):
        if not isinstance(images, Tensor) or images.ndim != 4 or len(images) < 2:
            raise ValueError(
                f"{name} must be at least 2 images [N, C, H, W], got {getattr(images, 'shape', type(images).__name__)}"
            )
    return frechet_distance(extract_features(features, real, batch_size), extract_features(features, fake, batch_size))


class _InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features (2048-d) of images in [-1, 1], grey or RGB, any size."""

    name = "inception-v3"

    def __init__(self, weights: Optional[io.BytesIO]) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        # torch-fidelity torch.loads what it is given, without weights_only: it gets the tensors
        # read safely by _safe_inception_weights, re-serialised in memory, never the user's file
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights
        )
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        uint8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(uint8).reshape(len(images), -1).to(torch.float64)


def _safe_inception_weights(path: Path) -> io.BytesIO:
    """The state dict in ``path`` read with ``weights_only=True`` (tensors and plain containers:
    a pickle that would run code is refused, naming the file), written back to an in-memory
    buffer for torch-fidelity's loader, which unpickles what it is given without that guard."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, a damaged zip, a foreign format
        raise ValueError(f"inception weights {str(path)!r} cannot be loaded safely (weights_only=True: tensors "
                         f"only, no code): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
                         "use the FID weights file pt_inception-2015-12-05-6726825d.pth") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"inception weights {str(path)!r} hold no state dict (a mapping of tensors), got "
                         f"{type(state).__name__}; use the FID weights file pt_inception-2015-12-05-6726825d.pth")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def inception_features(weights_path: Union[str, Path, None] = None) -> nn.Module:
    """The Inception-v3 feature network of standard FID (via torchmetrics + torch-fidelity).

    ``weights_path``: the FID Inception weights file (pt_inception-2015-12-05-6726825d.pth);
    without it torch-fidelity downloads them, which needs internet. Offline, use a classifier's
    features instead (``difflab train-classifier``).
    """
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise ModuleNotFoundError(
            "Inception features need the optional package torch-fidelity (pip install 'difflab[inception]'); "
            "offline, use a classifier's features: difflab train-classifier --data mnist"
        )
    if weights_path is not None and not Path(weights_path).is_file():
        raise FileNotFoundError(f"inception weights {weights_path} not found; give the path of the .pth file")
    weights = None if weights_path is None else _safe_inception_weights(Path(weights_path))
    try:
        return _InceptionFeatures(weights)
    except Exception as err:  # the download failed: offline (or the tensors do not fit the network)
        if weights is not None:
            raise ValueError(f"inception weights {str(weights_path)!r} do not fit the FID Inception-v3 network "
                             f"({type(err).__name__}: {err}); use pt_inception-2015-12-05-6726825d.pth") from None
        raise FileNotFoundError(
            f"could not load the Inception weights ({type(err).__name__}: {err}); without internet pass "
            "--inception-weights PATH, or use a classifier's features (difflab train-classifier)"
        ) from None
