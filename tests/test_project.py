"""The project's own promises: dependencies in step, README commands, CI entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"matplotlib": "matplotlib-base"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    conda = {
        _name(line.lstrip(" -"))
        for line in (ROOT / "environment.yml").read_text().splitlines()
        if line.startswith("  - ")
    }
    for requirement in wanted:
        name = _name(requirement)
        assert CONDA_NAMES.get(name, name) in conda, f"{name} is missing from environment.yml"


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/dev test" in readme
    assert "scripts/dev demo" in readme
    assert "exec scripts/dev test" in ci
