"""A request's fields, checked before it waits in line: each bad one is refused with a message
that names the field, the allowed values and the fix, which the page shows as it is.

Fields come from JSON (numbers) or from a form (strings): both are read here, so the checks
are the same for the page, a script and ``curl``. The server's limits (:class:`Limits`, set by
``difflab serve --max-n --max-steps --max-upload-mb --max-queue``) bound the work one request
can ask for.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..editing import STEPWISE_SAMPLERS
from ..samplers import SAMPLERS, sampler_sigmas
from ..validation import is_int, is_real
from .catalog import Catalog, ServedModel

__all__ = ["Limits", "BadRequest", "SampleParams", "parse_sample", "parse_inpaint", "parse_img2img"]

SEED_MAX = 2 ** 63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
GUIDANCE_MAX = 50.0  # far past any useful scale (1 to about 10); beyond it x0 estimates only overflow


def _show(v) -> str:
    """``repr(v)``, cut to 40 characters: a message quotes what was sent, not all of it."""
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


class BadRequest(ValueError):
    """A request the server refuses: ``status`` (400: a bad field, 404: an unknown model or
    job, 413: too large, ...) and the message the page shows."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: ``max_n`` images, ``max_steps`` sampler steps, an upload
    of ``max_upload_mb`` MB (the whole request body), and ``max_queue`` jobs waiting per device."""

    max_n: int = 16
    max_steps: int = 1000
    max_upload_mb: float = 4.0
    max_queue: int = 16

    def __post_init__(self) -> None:
        for name in ("max_n", "max_steps", "max_queue"):
            v = getattr(self, name)
            if not is_int(v) or v < (0 if name == "max_queue" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= "
                                 f"{0 if name == 'max_queue' else 1}, got {_show(v)}")
        if not is_real(self.max_upload_mb) or not 0 < self.max_upload_mb <= 1024:
            raise ValueError(f"--max-upload-mb must be a number in (0, 1024], got {self.max_upload_mb!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def describe(self) -> dict:
        return {"max_n": self.max_n, "max_steps": self.max_steps, "max_upload_mb": self.max_upload_mb,
                "max_queue": self.max_queue}


@dataclass(frozen=True)
class SampleParams:
    """A checked request: the model, the sampler and its steps, the class ``label`` (None:
    unconditional), ``guidance``, ``seed``, ``n`` images, DDIM's ``eta``; the editing ones add
    ``strength`` (img2img) or RePaint's ``resample`` and ``jump`` (inpaint)."""

    model: ServedModel
    sampler: str
    steps: int
    label: Optional[int]
    guidance: float
    seed: int
    n: int
    eta: float = 0.0
    strength: float = 1.0
    resample: int = 1
    jump: int = 1


_INT = re.compile(r"^[+-]?\d{1,30}$")  # longer: no limit is that large (and int() of 4,300 digits raises)


def _int(fields: Mapping[str, Any], name: str, default: Optional[int], lo: int, hi: int, fix: str = "") -> int:
    """``fields[name]`` as an int in lo .. hi (an int, an integral float, or a string of digits);
    ``default`` when absent (None: required). ``fix`` ends the out-of-range message."""
    v = fields.get(name)
    if v is None or v == "":
        if default is None:
            raise BadRequest(f"{name} is missing: give an integer in {lo} .. {hi}")
        return default
    if isinstance(v, str) and _INT.match(v.strip()):
        v = int(v.strip())
    elif isinstance(v, float) and v.is_integer():
        v = int(v)
    if not is_int(v):
        raise BadRequest(f"{name} must be an integer in {lo} .. {hi}, got {_show(v)}")
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must lie in {lo} .. {hi}, got {v}{fix}")
    return int(v)


def _real(fields: Mapping[str, Any], name: str, default: Optional[float], lo: float, hi: float,
          low_open: bool = False) -> float:
    v = fields.get(name)
    if v is None or v == "":
        if default is None:
            raise BadRequest(f"{name} is missing: give a number in {'(' if low_open else '['}{lo:g}, {hi:g}]")
        return default
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise BadRequest(f"{name} must be a number, got {_show(v)}") from None
    if not is_real(v) or not math.isfinite(v):
        raise BadRequest(f"{name} must be a finite number, got {_show(v)}")
    if not (lo < v if low_open else lo <= v) or v > hi:
        raise BadRequest(f"{name} must lie in {'(' if low_open else '['}{lo:g}, {hi:g}], got {v:g}")
    return float(v)


def _model(fields: Mapping[str, Any], catalog: Catalog) -> ServedModel:
    key = fields.get("model")
    if key is None or key == "":
        if len(catalog.ids()) == 1:  # one model: nothing to choose
            return catalog[catalog.ids()[0]]
        raise BadRequest(f"model is missing: give one of {', '.join(catalog.ids())}")
    if not isinstance(key, str) or key not in catalog:
        raise BadRequest(f"unknown model {_show(key)}; this server has {', '.join(catalog.ids())}", 404)
    return catalog[key]


def _label(fields: Mapping[str, Any], model: ServedModel) -> Optional[int]:
    classes = model.run.num_classes
    v = fields.get("label")
    if v is None or v == "" or v == "none":
        return None
    if classes is None:
        raise BadRequest(f"model {model.id!r} is unconditional: it takes no class label; leave label empty")
    return _int(fields, "label", None, 0, classes - 1)


def _prompt(fields: Mapping[str, Any], model: ServedModel) -> None:
    """The hook for text-conditioned models: none exists yet, so a prompt is refused, not ignored."""
    prompt = fields.get("prompt")
    if prompt not in (None, ""):
        raise BadRequest(f"model {model.id!r} takes no text prompt (no difflab model does yet); leave prompt "
                         "empty and choose a class, where the model has classes")


def _common(fields: Mapping[str, Any], catalog: Catalog, limits: Limits, allowed, default_sampler: str,
            default_steps: int) -> dict:
    if not isinstance(fields, Mapping):
        raise BadRequest("the request body must be a JSON object (or a form) of fields")
    model = _model(fields, catalog)
    _prompt(fields, model)
    own_sampler, own_steps = model.run.sampling_defaults()
    sampler = fields.get("sampler") or (own_sampler if own_sampler in allowed else default_sampler)
    if sampler not in allowed:
        raise BadRequest(f"sampler must be one of {', '.join(allowed)}, got {_show(sampler)}")
    proc = model.run.proc
    hi = min(limits.max_steps, proc.T) if proc.discrete else limits.max_steps
    why = (f" (the model's process has T = {proc.T} steps)" if proc.discrete and proc.T < limits.max_steps
           else " (the server's --max-steps)")
    steps = _int(fields, "steps", own_steps if sampler == own_sampler else default_steps, 1, hi, why)
    label = _label(fields, model)
    guidance = _real(fields, "guidance", 1.0, 0.0, GUIDANCE_MAX)
    if guidance != 1.0 and label is None:
        raise BadRequest("guidance other than 1 needs a class (label) to guide towards"
                         if model.run.num_classes else
                         f"model {model.id!r} is unconditional: leave guidance at 1")
    eta = _real(fields, "eta", 0.0, 0.0, 1.0)
    if eta and "eta" not in SAMPLERS[sampler].options:
        raise BadRequest(f"eta is an option of the ddim sampler, not of {sampler!r}; leave it at 0")
    return dict(model=model, sampler=sampler, steps=steps, label=label, guidance=guidance, eta=eta,
                seed=_int(fields, "seed", 0, 0, SEED_MAX),
                n=_int(fields, "n", 1, 1, limits.max_n, " (the server's --max-n)"))


def parse_sample(fields: Mapping[str, Any], catalog: Catalog, limits: Limits) -> SampleParams:
    """A generation request: model, label, prompt, sampler, steps, guidance, eta, seed, n."""
    p = SampleParams(**_common(fields, catalog, limits, tuple(sorted(SAMPLERS)), "ddim", 50))
    try:  # the noise levels the sampler would take: refuses what it cannot do with this process
        sampler_sigmas(p.model.run.proc, SAMPLERS[p.sampler], p.steps)
    except ValueError as err:
        raise BadRequest(f"{p.sampler} cannot take {p.steps} steps on model {p.model.id!r}: {err}") from None
    return p


def _image_model(common: dict, what: str) -> None:
    model = common["model"]
    if model.kind != "image":
        raise BadRequest(f"model {model.id!r} makes clips ({model.image_shape[0]} frames): the page generates them, "
                         f"and {what} takes an image model")


def parse_inpaint(fields: Mapping[str, Any], catalog: Catalog, limits: Limits) -> SampleParams:
    """An inpainting request: as :func:`parse_sample` with a step-by-step sampler (ddpm, ddim,
    euler, heun), and RePaint's ``resample`` (1: the replacement method) and ``jump``."""
    common = _common(fields, catalog, limits, STEPWISE_SAMPLERS, "ddim", 50)
    _image_model(common, "inpainting")
    resample = _int(fields, "resample", 1, 1, 20)
    jump = _int(fields, "jump", 1 if resample == 1 else 10, 1, common["steps"])
    if resample * common["steps"] > limits.max_steps * 2:
        raise BadRequest(f"resample x steps = {resample * common['steps']} network calls is more than this server "
                         f"allows ({2 * limits.max_steps}); lower resample or steps")
    return SampleParams(**common, resample=resample, jump=jump)


def parse_img2img(fields: Mapping[str, Any], catalog: Catalog, limits: Limits) -> SampleParams:
    """An image-to-image (SDEdit) request: as :func:`parse_sample` and ``strength`` in (0, 1]
    (how far up the noise levels the image goes before it is denoised)."""
    common = _common(fields, catalog, limits, tuple(sorted(SAMPLERS)), "ddim", 50)
    _image_model(common, "image-to-image")
    strength = _real(fields, "strength", None, 0.0, 1.0, low_open=True)
    return SampleParams(**common, strength=strength)
