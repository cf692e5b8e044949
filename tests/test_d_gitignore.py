"""What the README's commands make stays out of git, and nothing tracked is ignored (issue 17)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)

# Files the README's commands write, found in its code blocks: `--out X`, `--dataset X`,
# `--env-out X`, `record("X")`, `save_png("X")`.
_MADE = re.compile(
    r"--(?:out|dataset|env-out)[ =](?P<flag>[^\s`]+)|(?:record|save_png)\(\"(?P<call>[^\"]+)\"\)"
)


def _readme_outputs() -> list[str]:
    blocks = re.findall(r"```(?:bash|python)\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = {m["flag"] or m["call"] for block in blocks for m in _MADE.finditer(block)}
    # in the clone: not absolute, not in the home folder, not an object store's URL
    return sorted(n for n in found if not n.startswith(("/", "~")) and "://" not in n)


def _ignored(paths: list[str]) -> set[str]:
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=ROOT,
        input="\n".join(paths),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return set(done.stdout.split())


def test_what_the_readme_makes_is_ignored() -> None:
    made = _readme_outputs()
    assert {"s.parquet", "data/", "demo.env", "session.parquet"} <= set(made), made
    # The demo's and the dashboard's own files, a running recording's parts, a token file.
    made += [
        "recordings/demo-20261201T101500.parquet",
        "notebooks/recordings/session-20261201T101500.parquet",
        "s.parquet.parts/part-000001.parquet",
        ".env",
        "data/date=2026-12-01/part-1.parquet",
    ]
    paths = [name.rstrip("/") + ("/x" if name.endswith("/") else "") for name in made]
    assert _ignored(paths) == set(paths), sorted(set(paths) - _ignored(paths))


def test_nothing_tracked_is_ignored() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-ci", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked == []
    kept = ["notebooks/data/sample_recording.parquet", ".env.example", "docs/dashboard.png"]
    assert _ignored(kept) == set()
