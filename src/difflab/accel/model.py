"""A model made fast from outside: the same function ``model(x_t, t[, cond])``, fewer launches.

A sampler evaluates one network many times on inputs of one shape (50 times for a 50-step DDIM
batch). :class:`Accelerated` wraps the network and changes only how it runs:

- ``precision="bf16" | "fp16"``: autocast on the input's device; the output comes back in the
  input's dtype, so a sampler's own arithmetic stays float32 (also for a network stored in bf16:
  ``model.to(torch.bfloat16)`` then ``precision="bf16"``, half the weights' memory);
- ``channels_last=True``: 4-D inputs in NHWC memory order, the layout tensor-core convolutions
  read natively (the model's 4-D weights are converted once, in place; values are unchanged);
- ``compile=True`` (or a torch.compile mode, or a dict of its keyword arguments): the network
  traced and fused once, then reused for every step and every later call;
- ``cuda_graph=True``: each network call captured once per input signature (shapes, dtypes) as
  a CUDA graph and replayed: one launch instead of hundreds. Inputs are copied into the graph's
  static buffers and the output copied out, so a sampler may keep earlier outputs (multistep
  solvers do). ``cuda_graph="loop"``: a whole sampling run -- every step's network calls and the
  sampler's own arithmetic -- captured once per run and replayed as one graph (deterministic
  samplers, or stochastic ones drawing from the device's default generator; no callback).

Parameters updated in place (EMA, an optimizer, ``load_state_dict``) are seen by later replays;
when they are replaced by new tensors (``model.to(...)``, ``load_state_dict(assign=True)``) the
captures of the old ones are dropped and taken anew (:func:`.graphs.weights_fingerprint`).

The samplers know nothing of this: they call the wrapper as they call any model, and hand a
whole run to :meth:`Accelerated.sampling_run`, which runs it as it is or captures it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from ..devices import graphs_supported
from .graphs import CapturedCall, weights_fingerprint

__all__ = ["Accelerated", "PRECISIONS", "CUDA_GRAPH_MODES", "compile_kwargs", "check_compile_under_capture"]

PRECISIONS = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CUDA_GRAPH_MODES = (False, True, "loop")
CompileSpec = Union[bool, str, dict, None]


def compile_kwargs(compile: CompileSpec) -> Optional[dict]:
    """torch.compile's keyword arguments for a ``compile`` option (None: do not compile)."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return {}
    if isinstance(compile, str):
        return {"mode": compile}
    if isinstance(compile, dict):
        return dict(compile)
    raise TypeError(
        f"compile must be True/False, a torch.compile mode (e.g. 'max-autotune-no-cudagraphs') or a "
        f"dict of torch.compile keyword arguments, got {compile!r}"
    )


def check_compile_under_capture(compile: CompileSpec) -> None:
    """Refuse a torch.compile mode that replays CUDA graphs of its own where difflab captures."""
    kw = compile_kwargs(compile)
    if kw is not None and kw.get("mode") in ("reduce-overhead", "max-autotune"):
        raise ValueError(
            f"compile mode {kw['mode']!r} captures CUDA graphs itself; with difflab's cuda_graph use "
            "compile=True or compile='max-autotune-no-cudagraphs'"
        )


def _signature(t: Optional[Tensor]) -> Optional[tuple]:
    return None if t is None else (tuple(t.shape), t.dtype, t.stride(), str(t.device))


class Accelerated(nn.Module):
    """``module(x_t, t[, cond])`` with autocast, channels_last, torch.compile and CUDA graphs.

    Computes the wrapped model's function (up to the rounding of ``precision``); see the module
    docstring for each option. ``num_classes`` is the wrapped model's; ``dtype`` is the dtype
    the samplers keep their state in (float32 for a 16-bit network under autocast).
    """

    def __init__(self, module: Callable, precision: Optional[str] = None, channels_last: bool = False,
                 compile: CompileSpec = False, cuda_graph: Union[bool, str] = False) -> None:
        super().__init__()
        if not callable(module):
            raise TypeError(f"model must be callable as model(x_t, t[, cond]), got {type(module).__name__}")
        if isinstance(module, Accelerated):
            raise ValueError(f"the model is already accelerated ({module.extra_repr()}); pass its .module "
                             "with the options wanted")
        if not isinstance(precision, (str, type(None))) or precision not in PRECISIONS:
            raise ValueError(f"precision must be one of None, 'fp32', 'bf16', 'fp16', got {precision!r}")
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last must be True or False, got {channels_last!r}")
        if not (cuda_graph is False or cuda_graph is True or cuda_graph == "loop"):
            raise ValueError(f"cuda_graph must be False, True (each network call captured) or 'loop' (a whole "
                             f"sampling run captured), got {cuda_graph!r}")
        if cuda_graph:
            check_compile_under_capture(compile)
        autocast = PRECISIONS[precision]
        if autocast is not None and isinstance(module, nn.Module) and any(
                p.dtype == torch.float64 for p in module.parameters()):
            raise ValueError(f"precision={precision!r} autocasts float32 work, and this network is float64, which "
                             "autocast leaves as it is; use model.float() with it, or precision=None")
        self.module = module
        self.precision, self.channels_last, self.cuda_graph = precision, channels_last, cuda_graph
        self.compile_kwargs = compile_kwargs(compile)
        if hasattr(module, "num_classes"):  # (a labelled function without it keeps its labels unchecked)
            self.num_classes = module.num_classes
        if channels_last and isinstance(module, nn.Module):
            module.to(memory_format=torch.channels_last)  # 4-D weights only; values unchanged
        fn = module if self.compile_kwargs is None else torch.compile(module, **self.compile_kwargs)
        # plain attributes, not submodules: the compiled module would repeat the parameters
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_calls", {})  # captured network calls, by input signature
        object.__setattr__(self, "_runs", {})  # captured sampling runs, by run and input signature
        object.__setattr__(self, "_weights", None)

    def extra_repr(self) -> str:
        return (f"precision={self.precision}, channels_last={self.channels_last}, "
                f"compile={self.compile_kwargs}, cuda_graph={self.cuda_graph!r}")

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The dtype of the inputs (and a sampler's state): the parameters', except float32 for
        a 16-bit network under autocast, whose state would otherwise round to 8 or 11 bits a step."""
        params = [p for p in self.module.parameters() if p.is_floating_point()] \
            if isinstance(self.module, nn.Module) else []
        if not params:
            return None
        if params[0].dtype in (torch.float16, torch.bfloat16) and PRECISIONS[self.precision] is not None:
            return torch.float32
        return params[0].dtype

    # ---- one network call
    def _call(self, x: Tensor, t: Tensor, cond: Optional[Tensor], **kwargs) -> Tensor:
        dtype = PRECISIONS[self.precision]
        if dtype is not None and not torch.amp.is_autocast_available(x.device.type):
            raise ValueError(f"precision={self.precision!r} autocasts the network, which device type "
                             f"{x.device.type!r} does not support; use precision=None")
        # No autocast weight cache on a GPU: a CUDA graph capture (this call's, or a whole run's)
        # must not keep cast weights, and the setting must be the same in the warm-up and the
        # capture (torch.compile guards on it: a change would recompile inside the capture).
        ctx = (torch.autocast(x.device.type, dtype=dtype, cache_enabled=not x.is_cuda)
               if dtype is not None else contextlib.nullcontext())
        with ctx:
            out = self._fn(x, t, **kwargs) if cond is None else self._fn(x, t, cond, **kwargs)
        return out.to(x.dtype) if isinstance(out, Tensor) else out

    def forward(self, x: Tensor, t: Any, cond: Optional[Tensor] = None, **kwargs) -> Tensor:
        if self.channels_last and isinstance(x, Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cuda_graph is not True:
            return self._call(x, t, cond, **kwargs)
        if not isinstance(x, Tensor) or not graphs_supported(x.device):
            where = x.device if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"cuda_graph=True needs CUDA inputs, got x on {where}; use cuda_graph=False")
        if not isinstance(t, Tensor):
            t = torch.full((x.shape[0],), t, device=x.device)
        t, names = t.to(x.device), tuple(sorted(kwargs))
        values = tuple(kwargs[n] for n in names)
        key = (_signature(x), _signature(t), _signature(cond), names, tuple(map(_signature, values)),
               torch.is_grad_enabled())
        self.check_weights()
        graph = self._calls.get(key)
        if graph is None:
            def call(x_, t_, cond_, *values_):
                return self._call(x_, t_, cond_, **dict(zip(names, values_)))

            graph = self._calls[key] = CapturedCall(call, (x, t, cond, *values))
        return graph(x, t, cond, *values)

    # ---- a whole sampling run (the samplers' hook)
    def sampling_run(self, run: Callable[..., Tensor], settings: Any, x_T: Tensor, cond: Optional[Tensor],
                     generator: Optional[torch.Generator], callback: Optional[Callable[[dict], None]]) -> Tensor:
        """Run ``run(x_T, cond, generator, callback)``, a sampler's whole run under ``settings``
        (:class:`difflab.samplers.SamplingSettings`: hashable, everything but the inputs that
        shapes the run): in NHWC order for a channels_last model (the sampler's state too), and
        with ``cuda_graph="loop"`` captured once per settings and input signature and replayed
        as one CUDA graph, which calls no Python per step (the callback only advances a
        progress bar; a user's callback is refused)."""
        if self.channels_last and x_T.ndim == 4:
            x_T = x_T.contiguous(memory_format=torch.channels_last)
        if self.cuda_graph != "loop":
            return run(x_T, cond, generator, callback).contiguous()
        if not graphs_supported(x_T.device):
            raise ValueError(f"cuda_graph='loop' needs a CUDA device, got {x_T.device}; use cuda_graph=False")
        if getattr(callback, "has_user_callback", callback is not None):
            raise ValueError("cuda_graph='loop' replays the whole run without running Python, so it cannot call a "
                             "callback at each step; use cuda_graph=True with a callback")
        if generator is not None and settings.stochastic:
            raise ValueError(f"cuda_graph='loop': sampler {settings.sampler!r} with these options draws noise as it "
                             "runs, and a captured run draws it from the device's default generator, not from a "
                             "torch.Generator; seed with torch.manual_seed instead, or use cuda_graph=True")
        self.check_weights()
        key = (settings, _signature(x_T), _signature(cond))
        graph = self._runs.get(key)
        if graph is None:
            graph = self._runs[key] = CapturedCall(lambda x, c: run(x, c, None, None), (x_T, cond), warmup=1)
        return graph(x_T, cond).contiguous()

    # ---- captures and the weights they read
    def check_weights(self) -> None:
        """Drop the captured graphs if the model's weights moved since they were captured
        (``model.to(...)``, ``load_state_dict(..., assign=True)``, a replaced submodule): a
        replay would read the old tensors' memory."""
        now = weights_fingerprint(self.module)
        if self._weights != now:
            self.release()
            object.__setattr__(self, "_weights", now)

    def release(self) -> None:
        """Drop the captured graphs (their memory returns to the allocator on the next collection)."""
        self._calls.clear()
        self._runs.clear()
