"""The models a server offers, each under an id the server assigns.

A request names a model by that id (``"digits"``), never by a path: what the server reads from
its disk is fixed when it starts (``difflab serve --ckpt RUN ...``), so no request can make it
open another file. The id is the run's folder name (the file's stem for an exported model),
made unique with ``-2``, ``-3``, ... when two runs share a name.

A model makes images [C, H, W] (``kind`` "image": the page generates and edits them) or clips
[T, C, H, W] (``kind`` "clip", the video network's: generated, shown and downloaded as GIFs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import torch

from ..devices import resolve_device
from ..editing import STEPWISE_SAMPLERS
from ..samplers import SAMPLERS
from ..training.checkpoint import LoadedRun, load

__all__ = ["ServedModel", "Catalog", "model_id"]


def model_id(path: Union[str, Path]) -> str:
    """The id of a run from its path: the folder's name (an exported file's stem) in lower case,
    characters other than letters, digits, ``-``, ``_`` and ``.`` replaced by ``-``."""
    p = Path(path)
    if p.name == "checkpoints" or p.name.startswith("step_"):  # a checkpoint folder: the run's name
        p = p.parent if p.name == "checkpoints" else p.parent.parent
    name = p.stem if p.suffix == ".safetensors" else p.name
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"


@dataclass
class ServedModel:
    """One loaded run: ``id`` (what requests name), ``run`` (:class:`~difflab.training.checkpoint.LoadedRun`)
    and ``device`` (the queue its jobs wait in)."""

    id: str
    run: LoadedRun
    device: torch.device
    samplers: tuple = field(default_factory=tuple)

    @property
    def image_shape(self) -> tuple:
        """What one sample is: [C, H, W] for an image, [T, C, H, W] for a clip."""
        return tuple(self.run.image_shape)

    @property
    def kind(self) -> str:
        return "clip" if len(self.image_shape) == 4 else "image"

    def describe(self) -> dict:
        """What the page needs to build its controls; no path on the server."""
        sampler, steps = self.run.sampling_defaults()
        c, h, w = self.image_shape[-3:]
        return {
            "id": self.id, "kind": self.kind,
            "frames": self.image_shape[0] if self.kind == "clip" else None,
            "classes": self.run.num_classes,  # None: unconditional (no class menu)
            "prompt": False,  # no difflab model takes text yet: the page's prompt box stays hidden
            "channels": c, "height": h, "width": w,
            "samplers": list(self.samplers), "inpaint_samplers": [s for s in STEPWISE_SAMPLERS if s in self.samplers],
            "sampler": sampler, "steps": steps,
            "discrete_steps": self.run.proc.T if self.run.proc.discrete else None,
            "step": self.run.step,
        }


class Catalog:
    """The runs a server offers, loaded once at start on ``device``; ``catalog[id]``."""

    def __init__(self, paths: Sequence[Union[str, Path]], device="cpu") -> None:
        if not paths:
            raise ValueError("no model to serve: pass --ckpt RUN (a run folder, checkpoint folder or exported "
                             ".safetensors file), once per model")
        device = resolve_device(device, "--device")
        self.models: dict[str, ServedModel] = {}
        for path in paths:
            run = load(path, device=device)
            shape = tuple(run.image_shape)
            if len(shape) not in (3, 4) or shape[-3] not in (1, 3):
                raise ValueError(f"{path} makes samples of shape {shape}, neither images [C, H, W] nor clips "
                                 "[T, C, H, W] of 1 or 3 channels, which the web page shows; sample it with "
                                 "`difflab sample --save-tensor`")
            base = model_id(path)
            key, k = base, 1
            while key in self.models:
                k += 1
                key = f"{base}-{k}"
            self.models[key] = ServedModel(key, run, device, tuple(sorted(SAMPLERS)))

    def __getitem__(self, key: str) -> ServedModel:
        return self.models[key]

    def __contains__(self, key) -> bool:
        return key in self.models

    def ids(self) -> list[str]:
        return list(self.models)

    def describe(self) -> list[dict]:
        return [m.describe() for m in self.models.values()]
