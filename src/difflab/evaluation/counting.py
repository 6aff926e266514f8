"""Network passes of a sampler, counted exactly: the cost axis of speed/quality comparisons."""

from __future__ import annotations

from torch import nn

__all__ = ["CountedModel"]


class CountedModel(nn.Module):
    """``model`` with a count of its forward passes in ``calls`` (a guided step is one pass on a
    2B batch). Hands the wrapped model's ``num_classes`` on, so samplers treat it as the model.

        counted = CountedModel(run.ema_model)
        dl.sample(counted, run.proc, shape, "ddim", 50)
        counted.calls  # 50
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = model, 0
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)
