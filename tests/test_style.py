"""The code stays as the README promises: ``ruff check`` clean and ``ruff format``-ed.

ruff is pinned to one minor version in the ``dev`` extra (setup.cfg), because its formatter's
style can change between minor versions.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["keras_erranalysis", "tests", "benchmarks"]


def _ruff() -> list[str]:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return [found]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(command):
    result = subprocess.run(
        [*_ruff(), *command, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"ruff {' '.join(command)} found problems; run `ruff {command[0]} {' '.join(PATHS)}`"
        f":\n{result.stdout}{result.stderr}"
    )
