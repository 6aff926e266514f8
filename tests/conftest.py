import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"

# One intra-op thread: the tests run many small ops, where a second thread costs more in
# synchronisation than it computes; and when the 2-core CI machine has any other load, two
# threads that wait for each other made the suite 4x slower (351 s against 85 s, measured).
torch.set_num_threads(1)

# Without a GPU, Triton's kernels (difflab.accel.group_norm_triton) run in Triton's interpreter,
# on CPU tensors. It is chosen when a kernel is defined, so before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one thread, whatever an earlier test (or the code it ran) set."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
