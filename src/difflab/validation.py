"""Argument checks shared by difflab's public functions.

The rule: inputs are checked once, at the public function that receives them (``dl.sample``,
``GaussianDiffusion.training_loss``, a model's ``forward``, an editing function), and every
such function checks a given kind of input the same way, with the same message, through the
helpers here. Code behind the public boundary trusts what it is handed.

- numbers: :func:`is_int`, :func:`is_real` (Python and numpy numbers, never bool) and
  :func:`positive_int`;
- data and noise: :func:`float_input`, the one dtype rule (float tensors only, cast to the
  model's parameter dtype :func:`model_dtype`), with the hints :data:`X0_FIX` and
  :data:`NOISE_FIX`; :func:`check_finite` (no NaN or inf) and :func:`check_image_range`, the
  one scale rule of image-shaped data ([-1, 1]; :data:`IMAGE_RANGE_TOL` where the pixels are
  edited, :data:`DATA_RANGE_LIMIT` where a model trains on them);
- conditions: :func:`check_labels` (dtypes :data:`LABEL_DTYPES`): class labels [B] with the null
  label ``num_classes`` of classifier-free guidance, or a text model's token ids [B, L] (its
  ``tokenizer``), whose null condition is the empty caption (all padding);
- wrappers: :func:`model_attribute` finds a network's attribute through DDP, torch.compile and
  the speed layer's wrappers.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = [
    "is_int",
    "is_real",
    "positive_int",
    "model_dtype",
    "float_input",
    "X0_FIX",
    "NOISE_FIX",
    "check_finite",
    "IMAGE_RANGE_TOL",
    "DATA_RANGE_LIMIT",
    "PIXELS_FIX",
    "check_image_range",
    "LABEL_DTYPES",
    "check_labels",
    "check_token_ids",
    "model_attribute",
    "null_label",
]


# ----------------------------------------------------------------------------- numbers
def is_int(x) -> bool:
    """An integer (int, numpy integer), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:
    """A real number (int, float, numpy scalar), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, else a ValueError naming ``name`` (e.g. ``"n (the number of
    points)"``); numpy integers are accepted, bools are not."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------- data and noise
# The fix each float_input error suggests, by what the tensor is.
X0_FIX = "scale the data to [-1, 1] and use .float() (e.g. x.float() / 127.5 - 1 for 0..255 pixels)"
NOISE_FIX = "use standard normal noise, e.g. torch.randn(shape)"


def model_dtype(model: Callable) -> Optional[torch.dtype]:
    """The floating dtype ``model``'s inputs are cast to: its ``dtype`` attribute where it has one
    (a wrapper that autocasts a 16-bit network takes float32, :class:`difflab.accel.Accelerated`),
    else its parameters'; None for a model without floating parameters (a function, an analytic
    model), which takes any float dtype."""
    declared = getattr(model, "dtype", None)
    if isinstance(declared, torch.dtype):
        return declared
    if isinstance(model, torch.nn.Module) and not torch.compiler.is_compiling():
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def float_input(x, name: str, model: Callable, fix: str, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``x`` as the model computes: the one dtype rule of the library's entry points.

    Integer, bool or complex tensors are refused (TypeError naming ``name`` and ``fix``); float
    tensors of another dtype than the model's parameters (float64 or float16 data for a float32
    network) are cast to the parameters' dtype (or to ``dtype`` when given); a model without
    parameters takes any float dtype. A dtype check and a cast: no host-device synchronisation.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {x.dtype}; {fix}")
    dtype = dtype or model_dtype(model)
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def check_finite(x: Tensor, name: str, fix: str = "") -> Tensor:
    """``x`` unchanged, or ValueError naming ``name`` when it holds NaN or inf (with ``fix``).
    Reads the values: a host-device sync for a tensor on an accelerator, so only at a call made
    once (``dl.sample``'s noise), never per step."""
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            count = int(bad.sum())
            raise ValueError(f"{name} contains {count} NaN/inf value{'s' if count > 1 else ''}"
                             + (f"; {fix}" if fix else ""))
    return x


# How far outside [-1, 1] an image may reach where its pixels are edited and pasted back
# (rounding of x / 127.5 - 1, resampling overshoot).
IMAGE_RANGE_TOL = 1e-3
# Where a model trains on image-shaped data, the values may be standardised rather than scaled
# (ImageNet-normalised pixels lie within about +-2.7); 0..255 pixels are ~100 times off the scale
# the process assumes (x_T ~ N(0, I) needs data of about unit size): refused beyond this.
DATA_RANGE_LIMIT = 10.0
PIXELS_FIX = ("scale 0..255 pixels with x / 127.5 - 1 (0..1 floats with 2 * x - 1), "
              "as dl.editing.load_images and dl.data.load do")


def check_image_range(x: Tensor, name: str, limit: float = 1 + IMAGE_RANGE_TOL) -> Tensor:
    """The one scale rule of image-shaped data: ``x`` unchanged when it is not an image batch
    (fewer than 3 dimensions: vectors [B, D] are data in the model's own scale) or its values
    lie in [-limit, limit], else ValueError naming ``name``, the range found and the fix.

    ``limit``: 1 + :data:`IMAGE_RANGE_TOL` (the editing functions, whose inputs are pixels) or
    :data:`DATA_RANGE_LIMIT` (``training_loss``: data far outside the scale). Reads the values
    (a host-device sync on an accelerator): callers in a step loop call it for CPU tensors only.
    """
    if x.ndim < 3 or x.numel() == 0:
        return x
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo < -limit or hi > limit:
        scale = "scaled to [-1, 1]" if limit < 2 else f"scaled to [-1, 1] (values beyond +-{limit:g} are refused)"
        raise ValueError(f"{name} must be {scale}, got values in [{lo:.4g}, {hi:.4g}]; {PIXELS_FIX}")
    return x


# ------------------------------------------------------------------------ class labels
LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_labels(model: Callable, cond, batch: int, device=None, composed: bool = False,
                 name: str = "cond") -> Optional[Tensor]:
    """The condition for ``model`` as a long tensor (on ``device`` when given).

    Class labels: ``cond`` is None (no labels: returned as is), one integer for the whole batch,
    or an integer tensor [batch]. A model with a ``num_classes`` attribute (every difflab model)
    must be class-conditional (``num_classes`` not None), and its labels lie in 0 .. num_classes,
    the last being the null label ("no label") of classifier-free guidance. A plain function has
    no ``num_classes`` to check against: shape and dtype only.

    Text: a model with a ``tokenizer`` (:class:`difflab.models.text.TextConditioned`) takes token
    ids [batch, tokenizer.max_length] in 0 .. tokenizer.vocab_size (0: padding; a row of padding
    is the empty caption, the null condition). ``composed=True`` (the samplers) also takes a
    composed prompt [batch, K, max_length], K prompts whose guidance directions add up
    (:class:`difflab.samplers.denoiser.Denoiser`). Errors name the argument ``name``.
    """
    if cond is None:
        return None
    tokenizer = model_attribute(model, "tokenizer")
    if tokenizer is not None:
        if composed and isinstance(cond, Tensor) and cond.ndim == 3:
            L = int(tokenizer.max_length)
            if cond.shape[0] != batch or cond.shape[1] == 0 or cond.shape[2] != L:
                raise ValueError(f"cond: a composed prompt is token ids [{batch}, K, {L}] (K >= 1 prompts a sample, "
                                 "training.generate.prompts_for makes them from 'A AND B'), got shape "
                                 f"{tuple(cond.shape)}")
            cond = check_token_ids(cond.flatten(0, 1), int(tokenizer.vocab_size), L).view(cond.shape)
        elif not composed and isinstance(cond, Tensor) and cond.ndim == 3:  # a composed prompt where none is taken
            raise ValueError(f"cond is a composed prompt (token ids [B, K, L] of shape {tuple(cond.shape)}: prompts "
                             "joined by ' AND '), which only sampling takes (dl.sample, run.sample, difflab sample); "
                             "give one prompt per sample here: model.tokenizer.encode(prompts)")
        else:
            cond = check_token_ids(cond, int(tokenizer.vocab_size), int(tokenizer.max_length), batch, name=name)
        return cond if device is None else cond.to(device)
    if is_int(cond):
        cond = torch.full((batch,), int(cond), dtype=torch.long)
    if not isinstance(cond, Tensor) or cond.dtype not in LABEL_DTYPES or cond.shape != (batch,):
        raise ValueError(
            f"{name} must be a long tensor of class labels with shape [{batch}], got "
            f"{getattr(cond, 'dtype', type(cond).__name__)} of shape {tuple(getattr(cond, 'shape', ()))}"
        )
    if hasattr(model, "num_classes"):
        _check_label_range(cond, model.num_classes)
    cond = cond.long()
    return cond if device is None else cond.to(device)


def check_token_ids(ids, vocab_size: int, max_length: int, batch: Optional[int] = None,
                    exact_length: bool = True, name: str = "cond") -> Tensor:
    """``ids`` as a long tensor [B, L]: integers in 0 .. vocab_size (0: padding), L = max_length
    (``exact_length``) or 1 .. max_length, B = ``batch`` when given. The values are read on the CPU
    only (no host-device sync on an accelerator, none under torch.compile)."""
    want = f"[{'B' if batch is None else batch}, {max_length}]"
    if not isinstance(ids, Tensor) or ids.dtype not in LABEL_DTYPES or ids.ndim != 2 \
            or (batch is not None and ids.shape[0] != batch) \
            or not (ids.shape[1] == max_length if exact_length else 1 <= ids.shape[1] <= max_length):
        got = (f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(ids, Tensor)
               else f"{type(ids).__name__} {ids!r}"[:120])
        raise ValueError(f"{name} must be token ids, an integer tensor {want}"
                         f"{'' if exact_length else f' (or fewer than {max_length} columns)'}: "
                         f"model.tokenizer.encode(prompts) makes them; got {got}")
    if ids.device.type == "cpu" and not torch.compiler.is_compiling() and ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(ids))
        if lo < 0 or hi > vocab_size:
            raise ValueError(f"{name}: token ids must lie in 0 .. {vocab_size} (0: padding), got values in "
                             f"[{lo}, {hi}]: encode prompts with model.tokenizer.encode")
    return ids.long()


def null_label(model: Callable) -> Optional[int]:
    """The value that fills a condition to mean "no condition", classifier-free guidance's
    unconditional branch and label dropout's replacement: ``torch.full_like(cond, null_label(model))``.
    A text model's ``null_cond`` (0, padding: the empty caption), else a class-conditional
    model's ``num_classes`` (the null label); None for a model with neither."""
    value = model_attribute(model, "null_cond")
    return value if value is not None else model_attribute(model, "num_classes")


def model_attribute(model: Callable, name: str):
    """``model``'s attribute ``name``, found also through the wrappers that keep the network as
    ``.module`` (DDP, the speed layer's Accelerated), ``._orig_mod`` (torch.compile), ``.model``
    (a bound low-res image) or ``.net`` (EDM's preconditioning, a consistency model's boundary
    condition, a text model's wrapper); None where no layer has it."""
    for _ in range(6):
        value = getattr(model, name, None)
        if value is not None or model is None:
            return value
        model = (getattr(model, "module", None) or getattr(model, "_orig_mod", None) or getattr(model, "model", None)
                 or getattr(model, "net", None))
    return None


def unwrapped_instance(model, cls: type):
    """The ``cls`` instance inside ``model``, unwrapping the wrappers that keep the network as
    ``.module`` (DDP, the speed layer's Accelerated) or ``._orig_mod`` (torch.compile), else None.
    Not through ``.model``: a wrapper that binds inputs (a low-res image, known data) hides its network."""
    for _ in range(5):
        if model is None or isinstance(model, cls):
            return model
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
    return None


def _check_label_range(cond: Tensor, num_classes: Optional[int]) -> None:
    """Labels in 0 .. num_classes (num_classes: the null label); None: an unconditional model."""
    if num_classes is None:
        raise ValueError(
            "cond (class labels) was given but the model is not class-conditional (its num_classes "
            "is None): drop cond (and guidance), or build the model with num_classes=K to train or "
            "sample with labels"
        )
    # Values on CPU only: reading labels on an accelerator would stall the step loop on a
    # host-device sync; and not under torch.compile, where the branch would split the graph.
    if cond.device.type != "cpu" or torch.compiler.is_compiling():
        return
    if (cond < 0).any() or (cond > num_classes).any():
        raise ValueError(
            f"class labels must lie in 0 .. {num_classes - 1} (or {num_classes} for 'no label'), "
            f"got values in [{int(cond.min())}, {int(cond.max())}]"
        )
