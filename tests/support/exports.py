"""``exports``: Hub-style repos of tiny random decoders, one per family (session fixture, in the root
conftest so the converter and CLI tests share one build)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hub-style repos of tiny random models, one per family (tests/convert/hub_exports.py), built once
    in a child process: torch and optimum never enter the test process."""
    for module in ("torch", "optimum"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs the convert extra ({module}): pip install -c constraints.txt -e '.[convert]'")
    out = tmp_path_factory.mktemp("hub-exports")
    subprocess.run(
        [sys.executable, "-m", "tests.convert.hub_exports", str(out)], cwd=ROOT, check=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return out
