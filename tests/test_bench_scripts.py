"""bench/ is run by hand, so nothing else notices when a change of the package breaks one
of its scripts (a moved import, a renamed setting): each script at least starts and prints
its usage, and each helper module of the bench imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if "__main__" in p.read_text())
MODULES = sorted(p for p in BENCH.glob("*.py") if p not in SCRIPTS)


def test_the_bench_has_scripts() -> None:
    assert {"run.py", "publish_bench.py", "capture_bench.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_prints_its_usage(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, script.name, "--help"],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_module_imports(module: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module.stem}"],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
