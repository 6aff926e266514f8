"""Imports point down the data flow: every module of difflab imports only from its own package
or from packages of earlier layers (``difflab.LAYERS``), including imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import difflab

SRC = Path(difflab.__file__).parent
LAYER = {name: i for i, names in enumerate(difflab.LAYERS) for name in names}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """The difflab modules ``name`` imports (absolute names) and the line of each import."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "difflab" or target.startswith("difflab."):
                if target == "difflab":  # from difflab import models (a package), __version__ (the facade's)
                    found += [(f"difflab.{a.name}" if (SRC / a.name).exists() or (SRC / f"{a.name}.py").exists()
                               else "difflab", node.lineno) for a in node.names]
                else:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("difflab")]
    return found


def _package(module: str) -> str:
    """The top-level package of a difflab module: difflab.samplers.ddim -> samplers."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# The old name of a renamed module, kept as an alias for a script being rewritten (issue 21): no
# layer of its own, and no module of difflab imports it (tests/test_architecture.py). Remove with it.
ALIASES = {"_files"}


def test_every_package_has_a_layer():
    packages = {_package(name) for name, _ in _modules()} - {""} - ALIASES
    assert packages <= set(LAYER), f"packages without a layer in difflab.LAYERS: {sorted(packages - set(LAYER))}"


def _violations() -> list[str]:
    bad = []
    for name, path in _modules():
        own = _package(name)
        if own == "" or own not in LAYER:  # the facade that gathers every package; (a package
            continue  # without a layer fails test_every_package_has_a_layer)
        for target, line in _imports(name, path):
            other = _package(target)
            if other == own or (other == "" and own == "cli"):  # the command may read the facade
                continue
            if other not in LAYER or LAYER[other] >= LAYER[own]:  # ("" is the facade: above all)
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: {own} (layer {LAYER[own]}) imports {target} "
                           f"(layer {LAYER.get(other)})")
    return bad


def test_imports_point_down():
    bad = _violations()
    assert not bad, "imports that point up (or sideways) the data flow:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The walker finds an import placed inside a function, relative or absolute."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from ..training import trainer\n    import difflab.cli\n")
    found = _imports("difflab.samplers.m", module)
    assert ("difflab.training", 2) in found and ("difflab.cli", 3) in found


# Imports that stay inside a function, each for an optional package it needs (never for a cycle).
OPTIONAL_IMPORTS = {("difflab.accel", "difflab.accel.group_norm_triton")}  # triton: CUDA builds / Linux only


def _imports_in_functions(name: str, path: Path) -> set[tuple[str, str]]:
    tree = ast.parse(path.read_text(), str(path))
    inner = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = {n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
            inner |= {(name, target) for target, line in _imports(name, path) if line in lines}
    return inner


def test_no_import_inside_a_function():
    """A difflab import placed inside a function hides a cycle or an upward import; only imports of
    modules that need an optional package may wait for their first use."""
    found = set().union(*(_imports_in_functions(name, path) for name, path in _modules()))
    assert found <= OPTIONAL_IMPORTS, f"imports inside functions: {sorted(found - OPTIONAL_IMPORTS)}"
