import os
from pathlib import Path

import pytest
import torch
from mnist_idx import write_mnist_like

REPO = Path(__file__).resolve().parents[1]

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


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A folder in MNIST's layout written by the tests (tests/mnist_idx.py: t10k gzipped, train5k
    raw, from scikit-learn's digits), so that no test needs the real MNIST beside the checkout."""
    root = tmp_path_factory.mktemp("mnist")
    write_mnist_like(root)
    return root
