"""The package's structure, checked on its source: who may import what.

Every import in src/difflab is read with ``ast`` (those inside functions too) and resolved to
absolute module names, so each rule below is a short test over :func:`difflab_imports`:
imports point down the data flow (``difflab.LAYERS``), none waits inside a function to dodge
a cycle, and no module reaches into another's private names.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from scripts import REPO  # not conftest: tests/<package>/conftest.py files share that module name

import difflab

SRC = REPO / "src"
PACKAGE = "difflab"


@dataclass(frozen=True)
class Import:
    """One imported module or name: ``importer`` (a module of difflab) imports ``module``,
    or the name ``name`` from it; all names absolute (``difflab.samplers.ddim``)."""

    importer: str
    module: str
    name: Optional[str]
    path: Path
    line: int

    @property
    def target(self) -> str:
        """What is imported: the module, or the name in it (``difflab.validation.is_int``)."""
        return self.module if self.name is None else f"{self.module}.{self.name}"

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.importer} imports {self.target}"


def module_name(path: Path) -> str:
    """difflab.samplers for src/difflab/samplers/__init__.py, difflab.validation for validation.py."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (SRC.joinpath(*name.split(".")) / "__init__.py").is_file()


def is_module(name: str) -> bool:
    """Is ``name`` a module or package of difflab (rather than a name defined in one)?"""
    return SRC.joinpath(*name.split(".")).with_suffix(".py").is_file() or is_package(name)


def package_of(module: str) -> str:
    """The package a module belongs to: a package's __init__ belongs to the package itself."""
    return module if is_package(module) else module.rpartition(".")[0]


def imports_in(source: str, importer: str, path: Path) -> list[Import]:
    """The imports of difflab modules in ``source``, the code of module ``importer``, relative
    ones resolved. A from-import of a submodule (``from . import ddim``) imports that module."""
    package = package_of(importer)
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found += [Import(importer, a.name, None, path, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is the importer's package, 2 its parent, ...
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source_module = ".".join(base + ([node.module] if node.module else []))
            else:
                source_module = node.module or ""
            for a in node.names:
                if is_module(f"{source_module}.{a.name}"):
                    found.append(Import(importer, f"{source_module}.{a.name}", None, path, node.lineno))
                else:
                    found.append(Import(importer, source_module, a.name, path, node.lineno))
    return [i for i in found if i.module == PACKAGE or i.module.startswith(PACKAGE + ".")]


def difflab_imports() -> list[Import]:
    """Every import of a difflab module in src/difflab."""
    return [imp for path in sorted((SRC / PACKAGE).rglob("*.py"))
            for imp in imports_in(path.read_text(), module_name(path), path)]


def is_private(name: str) -> bool:
    """``_x``, but not a dunder such as ``__version__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_use(imp: Import) -> Optional[str]:
    """Why ``imp`` reaches into another module's privacy, or None.

    A private name (``_y``) belongs to its module: no other module imports it. A private
    module (``_x``) belongs to its package: only the modules of that package import it
    (``editing/_common.py`` serves ``editing/*.py``), and they import only its public names.
    """
    if imp.name is not None and is_private(imp.name) and imp.module != imp.importer:
        return f"the private name {imp.name}"
    parts = imp.module.split(".")
    for i, part in enumerate(parts):
        owner = ".".join(parts[:i])
        if is_private(part) and package_of(imp.importer) != owner:
            return f"the private module {'.'.join(parts[: i + 1])} from outside {owner}"
    return None


def test_the_import_scan_resolves_relative_nested_and_absolute_imports():
    source = """
import torch
import difflab.processes
from . import ddim
from .base import randn
from ..validation import is_int as _is_int

def f():
    from .. import schedules
    from ..processes import _hidden
"""
    path = SRC / PACKAGE / "samplers" / "example.py"
    got = [(i.module, i.name, i.line) for i in imports_in(source, "difflab.samplers.example", path)]
    assert got == [
        ("difflab.processes", None, 3),
        ("difflab.samplers.ddim", None, 4),
        ("difflab.samplers.base", "randn", 5),
        ("difflab.validation", "is_int", 6),  # the name imported, not its local alias
        ("difflab.schedules", None, 9),  # inside a function
        ("difflab.processes", "_hidden", 10),
    ]
    assert len(difflab_imports()) > 100


def test_no_module_imports_another_modules_private_names():
    bad = [f"{imp}: {why}" for imp in difflab_imports() if (why := private_use(imp))]
    assert not bad, "make the name public where it is shared, or move it:\n" + "\n".join(bad)


def test_the_privacy_rule_itself():
    def use(importer: str, module: str, name: Optional[str] = None) -> Optional[str]:
        return private_use(Import(importer, module, name, SRC / "x.py", 1))

    assert use("difflab.samplers", "difflab.processes", "_check_cond") == "the private name _check_cond"
    assert use("difflab.samplers", "difflab._devices") == "the private module difflab._devices from outside difflab"
    assert use("difflab.editing.img2img", "difflab.editing._common", "check_image") is None  # its own package
    assert use("difflab.editing", "difflab.editing._common") is None  # the package's __init__
    assert use("difflab.cli.img2img", "difflab.editing._common", "check_image") is not None
    assert use("difflab.editing.img2img", "difflab.editing._common", "_helper") is not None
    assert use("difflab.cli", "difflab", "__version__") is None


# ---------------------------------------------------------------- imports point down the data flow
LAYER = {name: i for i, names in enumerate(difflab.LAYERS) for name in names}


def top_package(module: str) -> str:
    """The package of difflab a module belongs to (difflab.samplers.ddim -> samplers; "" for the
    package itself, the facade ``difflab/__init__.py``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward(imp: Import) -> Optional[str]:
    """Why ``imp`` points up (or sideways) the data flow, or None. The facade gathers every
    package; the command line may read the facade (its version)."""
    own, other = top_package(imp.importer), top_package(imp.module)
    if own == "" or other == own or (other == "" and own == "cli"):
        return None
    if other == "" or LAYER[other] >= LAYER[own]:
        return f"{own} (layer {LAYER[own]}) imports from {other or 'the facade difflab'} (layer {LAYER.get(other)})"
    return None


def test_every_package_has_a_layer():
    packages = {top_package(module_name(p)) for p in (SRC / PACKAGE).rglob("*.py")} - {""}
    assert packages <= set(LAYER), f"packages without a layer in difflab.LAYERS: {sorted(packages - set(LAYER))}"


def test_imports_point_down():
    bad = [f"{imp}: {why}" for imp in difflab_imports() if (why := upward(imp))]
    assert not bad, "imports that point up (or sideways) the data flow:\n" + "\n".join(bad)


def test_the_direction_rule_itself():
    def use(importer: str, module: str, name: Optional[str] = None) -> Optional[str]:
        return upward(Import(importer, module, name, SRC / "x.py", 1))

    assert use("difflab.samplers.ddim", "difflab.processes", "GaussianDiffusion") is None
    assert use("difflab.samplers.denoiser", "difflab.editing.superres") is not None  # up
    assert use("difflab.samplers.sampling", "difflab.accel") is not None  # speed: after the numerics
    assert use("difflab.evaluation.report", "difflab.editing.io") is not None  # sideways
    assert use("difflab.cli", "difflab", "__version__") is None
    assert use("difflab.training.trainer", "difflab", "__version__") is not None


# Imports that stay inside a function, each for an optional package it needs (never for a cycle).
OPTIONAL_IMPORTS = {("difflab.accel", "difflab.accel.group_norm_triton"),  # triton: CUDA builds / Linux only
                    ("difflab.accel.group_norm", "difflab.accel.group_norm_triton")}


def import_module_calls(tree: ast.AST, importer: str) -> list[tuple[str, int]]:
    """The modules named by ``importlib.import_module(...)`` calls: a string, or an f-string of
    ``__package__`` and a string (``f"{__package__}.group_norm_triton"``); (name, line)."""
    package = package_of(importer)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((arg.value, node.lineno))
            elif isinstance(arg, ast.JoinedStr):
                parts = [package if isinstance(v, ast.FormattedValue) and getattr(v.value, "id", "") == "__package__"
                         else v.value if isinstance(v, ast.Constant) else "?" for v in arg.values]
                found.append(("".join(parts), node.lineno))
    return found


def imports_inside_functions() -> set[tuple[str, str]]:
    """(importer, module) of every difflab import placed inside a function, import statements
    and ``importlib.import_module`` calls alike."""
    found = set()
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        tree, importer = ast.parse(path.read_text(), str(path)), module_name(path)
        functions = [fn for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))]
        lines = {n.lineno for fn in functions for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        found |= {(imp.importer, imp.module) for imp in imports_in(path.read_text(), importer, path)
                  if imp.line in lines}
        calls = {n.lineno for fn in functions for n in ast.walk(fn) if isinstance(n, ast.Call)}
        found |= {(importer, name) for name, line in import_module_calls(tree, importer)
                  if line in calls and name.startswith(PACKAGE)}
    return found


def test_import_module_calls_are_seen():
    tree = ast.parse('import importlib\ndef f():\n    return importlib.import_module(f"{__package__}.kernels")\n')
    assert import_module_calls(tree, "difflab.accel.group_norm") == [("difflab.accel.kernels", 3)]


def test_no_import_inside_a_function():
    """A difflab import placed inside a function hides a cycle or an upward import; only imports
    of modules that need an optional package may wait for their first use."""
    found = imports_inside_functions()
    assert found <= OPTIONAL_IMPORTS, f"imports inside functions: {sorted(found - OPTIONAL_IMPORTS)}"
