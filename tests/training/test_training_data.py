"""The trainer's batches (difflab.training.data): indices and draws are functions of the step."""

import torch

from difflab.training.data import GlobalBatches


def test_batches_and_draws_are_functions_of_step():
    gb = GlobalBatches(10, 4, seed=0)
    seen = torch.cat([gb.indices(s) for s in range(5)])  # 20 = two epochs exactly
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(GlobalBatches(10, 4, seed=0).indices(3), gb.indices(3))
    assert not torch.equal(GlobalBatches(10, 4, seed=1).indices(0), gb.indices(0))
    assert gb.state(5) == {"epoch": 2, "position": 0, "n": 10, "batch_size": 4, "seed": 0}
