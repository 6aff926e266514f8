"""The network call of a sampler, made fast: the same function, computed with fewer launches.

A sampler evaluates one network many times on inputs of one shape (50 times for a 50-step
DDIM batch). :class:`FastModel` wraps ``model(x_t, t[, cond])`` and changes only how it runs:

- ``precision="bf16" | "fp16"``: autocast on the input's device (the output comes back in
  the input's dtype, so the sampler's own arithmetic stays float32);
- ``channels_last=True``: 4-D inputs in NHWC memory order, the layout tensor-core convolutions
  read natively (the model's 4-D weights are converted once, in place; values are unchanged);
- ``compile=True`` (or a torch.compile mode, or a dict of torch.compile keyword arguments):
  the network traced and fused once, then reused for every step and every later call;
- ``group_norm="compile" | "always" | "triton"``: how the U-Net's GroupNorms compute
  channels_last activations during these calls (:func:`difflab.models.norm.set_nhwc_group_norm`):
  on the NHWC view under torch.compile, always, or by difflab's Triton kernels; None (the
  default) leaves the process-wide setting alone;
- ``cuda_graph="loop"`` (``dl.sample`` only): the whole sampling run -- every step's network
  calls and the sampler's own arithmetic -- captured once per run signature and replayed as
  one graph: no launch or host gap between steps. Deterministic samplers, or stochastic ones
  drawing from the device's default generator (a ``generator`` is refused); no ``callback``;
- ``cuda_graph=True``: the whole network call captured once per input signature (shapes,
  dtypes) as a CUDA graph and replayed each step: one launch instead of hundreds. The inputs
  are copied into the graph's static buffers and the output is copied out, so a sampler may
  keep earlier outputs (multistep solvers do). Parameters updated in place (EMA, an optimizer,
  ``load_state_dict``) are seen by later replays; when they are replaced by new tensors
  (``model.to(...)``, ``load_state_dict(assign=True)``), ``dl.sample`` drops the captures of the
  old ones and captures anew (:func:`weights_fingerprint`); a FastModel called directly needs
  :func:`release` after such a change.

``dl.sample(..., precision=, channels_last=, compile=, cuda_graph=, group_norm=)`` builds one per model
and keeps it on the model (:func:`fast_model`), so a second call reuses the compiled network
and its graphs; :func:`release` drops them (and the graphs' memory).
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from .._devices import graph_stream
from ..models.norm import MODES as GROUP_NORM_MODES
from ..models.norm import check_nhwc_group_norm_mode, nhwc_group_norm

__all__ = ["FastModel", "fast_model", "release", "loop_graphs", "weights_fingerprint", "CapturedCall", "PRECISIONS"]

PRECISIONS = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_CACHE_ATTR = "_difflab_fast_models"
CompileSpec = Union[bool, str, dict]


class _Cache(dict):
    """The fast wrappers kept on a model. Copies and pickles of the model get an empty one
    (compiled code and CUDA graphs belong to the original's tensors)."""

    def __deepcopy__(self, memo) -> "_Cache":
        return _Cache()

    def __reduce__(self):
        return (_Cache, ())


def _compile_kwargs(compile: CompileSpec) -> Optional[dict]:
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


def _check_options(precision, channels_last, compile, cuda_graph, group_norm=None) -> None:
    if not isinstance(precision, (str, type(None))) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of None, 'fp32', 'bf16', 'fp16', got {precision!r}")
    if group_norm is not None and group_norm not in GROUP_NORM_MODES:
        raise ValueError(f"group_norm must be None or one of {', '.join(map(repr, GROUP_NORM_MODES))}, "
                         f"got {group_norm!r}")
    if group_norm is not None:
        check_nhwc_group_norm_mode(group_norm)  # "triton" without the package: refused now
    for name, value in (("channels_last", channels_last), ("cuda_graph", cuda_graph)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if cuda_graph:
        check_compile_under_capture(compile)


def check_compile_under_capture(compile: CompileSpec) -> None:
    """Refuse a torch.compile mode that replays CUDA graphs of its own where difflab captures."""
    kw = _compile_kwargs(compile)
    if kw is not None and kw.get("mode") in ("reduce-overhead", "max-autotune"):
        raise ValueError(
            f"compile mode {kw['mode']!r} captures CUDA graphs itself; with difflab's cuda_graph use "
            "compile=True or compile='max-autotune-no-cudagraphs'"
        )


class CapturedCall:
    """``fn(*inputs)`` captured once as a CUDA graph and replayed on static copies of its inputs.

    ``inputs`` are example tensors (None for an absent one); each call copies its tensors into
    the static inputs (clones of the examples: same shapes, dtypes and memory formats), replays
    and returns a copy of the static output, so a caller may keep earlier outputs. ``warmup``
    eager calls run first on difflab's graph stream (compilation, cuDNN autotuning, lazy
    initialisation: none of it may happen inside a capture). A network call per sampler step
    (``cuda_graph=True``) and a whole sampling run (``cuda_graph="loop"``) are both one of these.
    """

    def __init__(self, fn: Callable[..., Tensor], inputs: tuple, warmup: int = 2) -> None:
        self.fn = fn
        self.inputs = tuple(t.clone() if t is not None else None for t in inputs)  # clone keeps the format
        self.device = next(t.device for t in inputs if t is not None)
        self._warm_up(warmup)
        self._capture()

    # ---- the CUDA parts (a CPU test replaces these three)
    def _warm_up(self, n: int) -> None:
        side = graph_stream(self.device)  # difflab's one graph stream: no cuBLAS workspace per graph
        side.wait_stream(torch.cuda.current_stream(self.device))
        # the warm-up's random draws (a stochastic sampler's) are given back, so the first replay
        # draws what an uncaptured run seeded alike would
        with torch.random.fork_rng(devices=[self.device]), torch.cuda.stream(side):
            for _ in range(n):
                self.fn(*self.inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=graph_stream(self.device)):
            self.out = self.fn(*self.inputs)

    def _replay(self) -> None:
        self.graph.replay()

    def __call__(self, *inputs) -> Tensor:
        for static, value in zip(self.inputs, inputs):
            if static is not None:
                static.copy_(value)
        self._replay()
        return self.out.clone()


class FastModel(nn.Module):
    """``model(x_t, t[, cond])`` with autocast, channels_last, torch.compile and CUDA graphs.

    Computes the model's function (up to the rounding of ``precision``); see the module's
    docstring for what each option does. ``num_classes`` is the wrapped model's.
    """

    def __init__(
        self,
        model: Callable,
        precision: Optional[str] = None,
        channels_last: bool = False,
        compile: CompileSpec = False,
        cuda_graph: bool = False,
        group_norm: Optional[str] = None,
    ) -> None:
        super().__init__()
        _check_options(precision, channels_last, compile, cuda_graph, group_norm)
        if not callable(model):
            raise TypeError(f"model must be callable as model(x_t, t[, cond]), got {type(model).__name__}")
        self.model = model
        self.precision, self.channels_last, self.cuda_graph = precision, channels_last, cuda_graph
        self.group_norm = group_norm
        self.compile_kwargs = _compile_kwargs(compile)
        self.num_classes = getattr(model, "num_classes", None)
        if channels_last and isinstance(model, nn.Module):
            model.to(memory_format=torch.channels_last)  # 4-D weights only; values unchanged
        fn = model
        if self.compile_kwargs is not None:
            fn = torch.compile(model, **self.compile_kwargs)
        # plain attributes, not submodules: the compiled module would repeat the parameters
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_graphs", {})

    def extra_repr(self) -> str:
        return (f"precision={self.precision}, channels_last={self.channels_last}, "
                f"compile={self.compile_kwargs}, cuda_graph={self.cuda_graph}, group_norm={self.group_norm}")

    def _call(self, x: Tensor, t: Tensor, cond: Optional[Tensor]) -> Tensor:
        dtype = PRECISIONS[self.precision]
        if dtype is not None and not torch.amp.is_autocast_available(x.device.type):
            raise ValueError(f"precision={self.precision!r} autocasts the network, which device type "
                             f"{x.device.type!r} does not support; use precision=None")
        # No autocast weight cache on a GPU: a CUDA graph capture (this call's, or a whole run's)
        # must not keep cast weights, and the setting must be the same in the warm-up and the
        # capture (torch.compile guards on it: a change would recompile inside the capture). Each
        # weight is cast once a call anyway.
        ctx = (torch.autocast(x.device.type, dtype=dtype, cache_enabled=not x.is_cuda)
               if dtype is not None else contextlib.nullcontext())
        with ctx, nhwc_group_norm(self.group_norm):
            out = self._fn(x, t) if cond is None else self._fn(x, t, cond)
        return out.to(x.dtype) if isinstance(out, Tensor) else out

    def forward(self, x: Tensor, t: Any, cond: Optional[Tensor] = None) -> Tensor:
        if self.channels_last and isinstance(x, Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.cuda_graph:
            return self._call(x, t, cond)
        if not isinstance(x, Tensor) or x.device.type != "cuda":
            where = x.device if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"cuda_graph=True needs CUDA inputs, got x on {where}; use cuda_graph=False")
        if not isinstance(t, Tensor):
            t = torch.full((x.shape[0],), t, device=x.device)
        t = t.to(x.device)
        key = (tuple(x.shape), x.dtype, x.stride(), tuple(t.shape), t.dtype,
               None if cond is None else (tuple(cond.shape), cond.dtype), torch.is_grad_enabled())
        graph = self._graphs.get(key)
        if graph is None:
            if not self._graphs:  # where the weights are now: check_weights compares later calls with it
                object.__setattr__(self, "_weights", weights_fingerprint(self.model))
            graph = self._graphs[key] = CapturedCall(self._call, (x, t, cond.to(x.device) if cond is not None else None))
        return graph(x, t, cond)

    def check_weights(self) -> None:
        """Drop the captured graphs if the model's weights moved since they were captured
        (``model.to(...)``, ``load_state_dict(..., assign=True)``, a replaced submodule): a
        replay would read the old tensors' memory. :func:`fast_model` calls this."""
        if self._graphs and getattr(self, "_weights", None) != weights_fingerprint(self.model):
            self.release()

    def release(self) -> None:
        """Drop the captured graphs (their memory returns to the allocator on the next collection)."""
        self._graphs.clear()


def fast_model(
    model: Callable,
    precision: Optional[str] = None,
    channels_last: bool = False,
    compile: CompileSpec = False,
    cuda_graph: bool = False,
    group_norm: Optional[str] = None,
) -> Callable:
    """The model itself when no option is set; else a :class:`FastModel`, kept on the model
    (one per set of options) so later calls reuse its compiled network and CUDA graphs."""
    _check_options(precision, channels_last, compile, cuda_graph, group_norm)
    if (PRECISIONS[precision] is None and not channels_last and compile in (False, None) and not cuda_graph
            and group_norm is None):
        return model
    key = (precision, channels_last, repr(_compile_kwargs(compile)), cuda_graph, group_norm)
    if isinstance(model, FastModel):  # already wrapped: with these options, or refused
        own = (model.precision, model.channels_last, repr(model.compile_kwargs), model.cuda_graph, model.group_norm)
        if own != key:
            raise ValueError(f"the model is already a FastModel ({model.extra_repr()}); pass its .model with the "
                             "options wanted, or no options")
        return model
    if PRECISIONS[precision] is not None and isinstance(model, nn.Module) and any(
            p.dtype == torch.float64 for p in model.parameters()):
        raise ValueError(f"precision={precision!r} autocasts float32 work, and this network is float64, which "
                         "autocast leaves as it is; use model.float() with it, or precision=None")
    cache = getattr(model, _CACHE_ATTR, None) if isinstance(model, nn.Module) else None
    if cache is not None and key in cache:
        cache[key].check_weights()
        return cache[key]
    if cache and channels_last and any(p.ndim == 4 and not p.is_contiguous(memory_format=torch.channels_last)
                                       for p in model.parameters()):
        for other in cache.values():  # the weights move to new tensors: graphs of the old ones go
            other.release()
    fast = FastModel(model, precision, channels_last, compile, cuda_graph, group_norm)
    if isinstance(model, nn.Module):
        if cache is None:
            cache = _Cache()
            object.__setattr__(model, _CACHE_ATTR, cache)  # not a submodule: no state_dict entry
        cache[key] = fast
    return fast


def weights_fingerprint(model: Callable) -> tuple:
    """Where, and in what dtype, a model's parameters and buffers are: a CUDA graph reads them at
    the addresses it was captured with, so a change makes its captures stale (() for a function)."""
    if not isinstance(model, nn.Module):
        return ()
    return tuple((t.data_ptr(), t.dtype) for t in itertools.chain(model.parameters(), model.buffers()))


class _Loops(dict):
    """The captured sampling runs kept on a model (``cuda_graph="loop"``), by everything that
    shapes a run: sampler, noise levels, options, shapes, guidance, speed options; all of them
    for the weights where they were captured (:meth:`check_weights`)."""

    weights: tuple = ()

    def check_weights(self, model: Callable) -> None:
        """Drop the runs captured with weights that have moved since (see FastModel.check_weights)."""
        now = weights_fingerprint(model)
        if self and self.weights != now:
            self.clear()
        self.weights = now

    def release(self) -> None:
        self.clear()


_FUNCTION_LOOPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def loop_graphs(model: Callable) -> dict:
    """The dict of captured sampling runs kept on ``model`` (for a plain function, in a table
    that forgets it with the function; a fresh one for what cannot be referenced weakly)."""
    if not isinstance(model, nn.Module):
        try:
            return _FUNCTION_LOOPS.setdefault(model, _Loops())
        except TypeError:
            return _Loops()
    cache = getattr(model, _CACHE_ATTR, None)
    if cache is None:
        cache = _Cache()
        object.__setattr__(model, _CACHE_ATTR, cache)
    return cache.setdefault("loops", _Loops())


def release(model: Callable) -> None:
    """Forget the fast wrappers kept on ``model`` (compiled networks, CUDA graphs)."""
    try:
        _FUNCTION_LOOPS.pop(model, None)
    except TypeError:
        pass
    cache = getattr(model, _CACHE_ATTR, None)
    if cache:
        for fast in cache.values():
            fast.release()
        cache.clear()
