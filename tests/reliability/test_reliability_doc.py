"""``docs/reliability.md`` is generated from the tests' markers and kept up to date."""

from __future__ import annotations

import subprocess
import sys

from tests.reliability.support import REPO_ROOT


def test_the_committed_table_is_up_to_date() -> None:
    done = subprocess.run([sys.executable, "scripts/reliability_table.py", "--check"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr + done.stdout[-2000:]
