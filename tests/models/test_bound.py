"""A network with bound inputs (difflab.models.bound.BoundInputs, the base of WithLowRes and
WithKnown): what the samplers read of the wrapped network passes through, and a run captured whole
is refused, naming what it would keep."""

import pytest
import torch
from torch import nn

from difflab.models.bound import BoundInputs
from difflab.models.masked import WithKnown
from difflab.models.superres import WithLowRes


class Net(nn.Module):
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.calls = []

    def forward(self, x, t, cond=None, **bound):
        self.calls.append(sorted(bound))
        return x

    def sampling_run(self, run, settings, x_T, cond, generator, callback):
        return run(x_T, cond, generator, callback) + 1


@pytest.mark.parametrize("wrap, what", [(lambda m: WithLowRes(m, torch.zeros(1)), "low-resolution images"),
                                        (lambda m: WithKnown(m, torch.zeros(1), torch.ones(1)), "known data")])
def test_the_wrapped_networks_attributes_pass_through_and_a_captured_run_is_refused(wrap, what):
    net = Net().eval()
    bound = wrap(net)
    assert isinstance(bound, BoundInputs) and bound.num_classes == 10 and not bound.training
    assert bound.dtype == torch.float32
    x = torch.zeros(3)
    assert torch.equal(bound.sampling_run(lambda *a: a[0], None, x, None, None, None), x + 1)  # the inner hook
    bound(x, torch.zeros(3))
    assert net.calls[-1] in (["lowres"], ["known", "mask"])
    net.cuda_graph = "loop"
    with pytest.raises(ValueError, match=f"would keep .*{what}"):
        bound.sampling_run(lambda *a: a[0], None, x, None, None, None)
    plain = WithLowRes(nn.Identity(), torch.zeros(1))  # no hook of its own: the run as it is
    assert torch.equal(plain.sampling_run(lambda *a: a[0] * 2, None, x + 1, None, None, None), 2 * (x + 1))
