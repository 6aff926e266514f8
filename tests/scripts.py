"""Load a script of the repository (benchmarks/*.py, tests/triton_aot.py) as a module, to call
its functions from a test: the scripts are not part of the difflab package. A benchmark's
package (benchmarks/throughput_lib) imports as its entry point imports it, with benchmarks/
on the path (``benchmarks_on_path``)."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def load_script(path: str) -> ModuleType:
    """The script at ``path`` (relative to the repository root), executed as a fresh module."""
    file = REPO / path
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def benchmarks_on_path() -> None:
    """Put benchmarks/ on sys.path, so that ``import throughput_lib`` finds the harnesses' parts."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
