"""Training data in memory, and which samples (and which random draws) each step uses.

Everything a step consumes is a pure function of (seed, step, global sample index):

- :class:`GlobalBatches` gives the dataset indices of step s's global batch, reading an endless
  stream of per-epoch permutations (epoch e shuffled by a generator seeded from (seed, e));
- :func:`step_generator` seeds the draws of step s (timesteps t, noise, label-dropout
  uniforms) from (seed, s); the trainer draws them for the whole global batch and each process
  takes its slice.

So a resumed run sees exactly the batches and draws it would have seen, and K processes
together see exactly what one process sees: the only difference left is floating-point
summation order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from .. import data as datasets
from ..validation import DATA_RANGE_LIMIT, check_image_range, is_int

if TYPE_CHECKING:  # (for the annotations only: config.py checks dataset names with this module)
    from .config import DataConfig

__all__ = ["dataset_names", "load_data", "check_data", "is_captions", "GlobalBatches", "mix_seed", "step_generator"]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64 finaliser on each, chained): nearby inputs,
    e.g. consecutive steps, give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        z = (h ^ (int(v) & _MASK64)) & _MASK64
        z = (z + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


def step_generator(generator: torch.Generator, seed: int, step: int) -> torch.Generator:
    """Re-seed ``generator`` for the random draws of optimizer step ``step`` (host-side only)."""
    generator.manual_seed(mix_seed(seed, 0x5EED, step))
    return generator


def dataset_names() -> tuple[str, ...]:
    return tuple(datasets.registry.names()) + ("toy2d",)


def load_data(spec: DataConfig) -> tuple[Tensor, Optional[Tensor]]:
    """(x, labels or None) for a data spec: float32 [N, ...] in about [-1, 1], long [N] (or N
    captions: ``captioned_digits``).

    ``toy2d`` takes kwargs ``dataset`` (default swiss_roll), ``n`` (10000) and ``seed`` (0)
    and carries class labels; every other name goes to ``dl.data.load(name, **kwargs)``.
    """
    kw = dict(spec.kwargs)
    if spec.name == "toy2d":
        name = kw.pop("dataset", "swiss_roll")
        n = kw.pop("n", 10_000)
        seed = kw.pop("seed", 0)
        if not is_int(seed):
            raise ValueError(f"data 'toy2d' (config field data.kwargs.seed): an integer, got {seed!r}")
        try:
            x, y = datasets.toy2d.make(name, n, torch.Generator().manual_seed(int(seed)), labels=True, **kw)
        except ValueError as err:
            raise ValueError(f"data 'toy2d' (config field data.kwargs): {err}") from None
    else:
        try:
            x, y = datasets.load(spec.name, **kw)
        except TypeError as err:
            raise TypeError(f"data {spec.name!r} (config field data.kwargs): {err}") from None
    return check_data((x, y), name=f"data {spec.name!r}")  # float images [N, ...], integer labels [N]


def is_captions(labels: Any) -> bool:
    """Whether a data set's labels are captions: a sequence of strings (one per image)."""
    return isinstance(labels, (list, tuple)) and len(labels) > 0 and all(isinstance(c, str) for c in labels)


def check_data(data: Any, num_classes: Optional[int] = None,
               name: str = "data") -> tuple[Tensor, Optional[Tensor]]:
    """``data = (x, labels or None)`` given directly (``Trainer(..., data=...)``), checked as the
    config's data is: x a float tensor [N, ...] (N >= 1) of finite values, image-shaped x
    ([N, C, H, W]) on the scale the process assumes (within +-DATA_RANGE_LIMIT: 0..255 pixels are
    refused, the scale rule of :func:`difflab.validation.check_image_range`), labels an integer
    tensor [N] in 0 .. num_classes-1, or N captions (strings, for a text model). NumPy arrays are
    taken (``torch.as_tensor``). Returns (x as float32, labels as long, a list of captions, or
    None); errors name ``name``."""
    if isinstance(data, Tensor) or not isinstance(data, (tuple, list)) or len(data) != 2:
        got = f"a tensor of shape {tuple(data.shape)}" if isinstance(data, Tensor) else repr(type(data).__name__)
        raise ValueError(f"{name} must be a pair (images, labels or None), e.g. data=(x, None); got {got}")
    x, y = data
    captions = is_captions(y)
    try:
        x = torch.as_tensor(x)
        y = torch.as_tensor(y) if (y is not None and not captions) else y
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name}: the images and labels must be tensors or NumPy arrays ({err})") from None
    if not x.is_floating_point():
        raise ValueError(f"{name}: the images must be a float tensor in about [-1, 1], got dtype {x.dtype}"
                         + (" (for 8-bit images: x.float() / 127.5 - 1)" if x.dtype == torch.uint8 else ""))
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{name}: the images must have shape [N, ...] with N >= 1 samples, got {tuple(x.shape)}")
    if not torch.isfinite(x.sum(dtype=torch.float64)):  # NaN/inf propagate; no [N, ...] mask unless needed
        bad = ~torch.isfinite(x)
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise ValueError(f"{name}: the images hold {int(bad.sum())} NaN/inf values (the first in sample "
                         f"{first}); remove or fix those samples")
    check_image_range(x, f"{name}: the images", DATA_RANGE_LIMIT)  # before any model sees them
    if captions:
        if len(y) != len(x):
            raise ValueError(f"{name}: {len(y)} captions for {len(x)} images; give one caption per image")
        return x.float().contiguous(), list(y)
    if y is not None:
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise ValueError(f"{name}: the labels must be integers (class indices), got dtype {y.dtype}")
        if y.shape != (len(x),):
            raise ValueError(f"{name}: the labels must have shape [N] = [{len(x)}] (one per image), "
                             f"got {tuple(y.shape)}")
        if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name}: the labels lie in [{int(y.min())}, {int(y.max())}] but the model has "
                             f"num_classes = {num_classes} (labels 0 .. {num_classes - 1}); "
                             "set model.kwargs.num_classes")
        y = y.long()
    return x.float().contiguous(), y


class GlobalBatches:
    """Dataset indices of each step's global batch, without replacement within an epoch.

    Step s reads positions [s B, (s + 1) B) of the stream perm_0 ++ perm_1 ++ ..., where perm_e
    is a permutation of 0..N-1 drawn from a generator seeded by (seed, e). No state is kept
    beyond a cache, so ``indices(s)`` is the same in a fresh run, a resumed one, or on any rank.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device=None) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._cache: dict[int, Tensor] = {}

    def permutation(self, epoch: int) -> Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            g = torch.Generator().manual_seed(mix_seed(self.seed, 0xDA7A, epoch))
            perm = torch.randperm(self.n, generator=g)
            if self.device.type == "cuda":  # one copy per epoch, then indexing stays on the GPU
                perm = perm.pin_memory().to(self.device, non_blocking=True)
            self._cache[epoch] = perm.to(self.device)
        return self._cache[epoch]

    def indices(self, step: int) -> Tensor:
        start, stop = step * self.batch_size, (step + 1) * self.batch_size
        parts = []
        while start < stop:
            epoch, pos = divmod(start, self.n)
            take = min(stop - start, self.n - pos)
            parts.append(self.permutation(epoch)[pos:pos + take])
            start += take
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def state(self, step: int) -> dict:
        """Where the stream stands after ``step`` steps (stored in checkpoints)."""
        epoch, pos = divmod(step * self.batch_size, self.n)
        return {"epoch": epoch, "position": pos, "n": self.n, "batch_size": self.batch_size, "seed": self.seed}
