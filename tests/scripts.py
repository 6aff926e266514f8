"""Load a script of the repository (benchmarks/*.py, tests/triton_aot.py) as a module, to call
its functions from a test: the scripts are not part of the difflab package."""

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(path: str) -> ModuleType:
    """The script at ``path`` (relative to the repository root), executed as a fresh module."""
    file = REPO / path
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
