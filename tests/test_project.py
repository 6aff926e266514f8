"""The README's commands, CI and the package agree."""

import re

from scripts import REPO  # not conftest: tests/<package>/conftest.py files share that module name

import difflab as dl


def readme_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_first_block_has_the_two_commands():
    install_demo, tests = readme_commands()[:2]
    assert "difflab demo" in install_demo and "pip install" in install_demo
    assert "pytest" in tests and ".[test]" in tests


def test_ci_runs_exactly_the_readme_test_command():
    """CI installs what the README tells a user to install: the README's test command in a fresh
    environment, and no torch pin of its own that the README and pyproject.toml do not carry."""
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = readme_commands()[1]
    assert test_cmd in ci.splitlines()
    pins = re.findall(r"torch==[0-9.]+", ci)
    for pin in pins:
        assert pin in (REPO / "README.md").read_text() and pin in (REPO / "pyproject.toml").read_text(), pin


def test_public_api_names_exist():
    for name in ["schedules", "GaussianDiffusion", "sample"]:
        assert hasattr(dl, name)
    for name in ["linear", "cosine", "get", "NoiseSchedule"]:
        assert hasattr(dl.schedules, name)
    proc = dl.GaussianDiffusion(dl.schedules.linear(10))
    for name in ["q_sample", "q_posterior", "predict_x0", "predict_eps", "training_loss"]:
        assert callable(getattr(proc, name))


def test_every_test_docs_reliability_names_exists():
    """docs/reliability.md backs each guarantee with tests by path::name: each must exist."""
    text = (REPO / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text)
    assert len(named) >= 20
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M)]
    assert not missing, missing
