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


# The layout's own rules (README: module map). The import contracts between folders are
# import-linter's, in pyproject.toml; these are the ones it cannot see.

PACKAGE = ROOT / "tesaiot_data"
MAX_MODULE_LINES = 600


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_no_module_is_longer_than_600_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): count
        for path in _modules()
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these by responsibility: {long}"


def _private_imports(path: Path, source: str | None = None) -> list[str]:
    """`from tesaiot_data.x import _name` of another module, or a `_module` of another folder."""
    import ast  # noqa: PLC0415

    own = _module_name(path)
    own_package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [(node.module, [alias.name for alias in node.names])]
        elif isinstance(node, ast.Import):
            modules = [(alias.name, []) for alias in node.names]
        else:
            continue
        for module, names in modules:
            if not module.startswith("tesaiot_data") or module == own:
                continue
            *package, last = module.split(".")
            if last.startswith("_") and not own_package.startswith(".".join(package)):
                found.append(f"{own}: {module}")  # a private module of another folder
            found += [
                f"{own}: {module}.{name}"
                for name in names
                if name.startswith("_") and not name.endswith("__")
            ]
    return found


def test_no_module_imports_a_private_name_of_another() -> None:
    found = [hit for path in _modules() for hit in _private_imports(path)]
    assert found == []


def test_the_private_import_check_can_fail() -> None:
    path = PACKAGE / "readers" / "example.py"  # as if it were a module there (not written)
    source = (
        "from tesaiot_data.files.parquet import _hidden, shown\n"
        "import tesaiot_data.mqtt._paho\n"
        "from tesaiot_data.readers import _sibling_module\n"
    )
    assert _private_imports(path, source) == [
        "tesaiot_data.readers.example: tesaiot_data.files.parquet._hidden",
        "tesaiot_data.readers.example: tesaiot_data.mqtt._paho",
        "tesaiot_data.readers.example: tesaiot_data.readers._sibling_module",
    ]


@pytest.mark.parametrize(
    "module",
    [
        "tesaiot_data.mqtt.client",
        "tesaiot_data.mqtt.publisher",
        "tesaiot_data.parse.rows",
        "tesaiot_data.parse.single",
        "tesaiot_data.parse.encode",
    ],
)
def test_socket_and_parse_stages_load_neither_pandas_nor_pyarrow(module: str) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        f"import sys, {module}\n"
        "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
