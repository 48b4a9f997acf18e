"""Write ``docs/reliability.md`` from the tests that guard each case.

Every test marked ``@pytest.mark.reliability(area=, case=, did=, outcome=, lost=)`` (see
``tests/reliability/support.py``) is one row; the table is grouped by area in a fixed order and
each row names its test, so the document lists exactly what the suite checks. Collection only:
nothing runs.

    python scripts/reliability_table.py           # rewrite docs/reliability.md
    python scripts/reliability_table.py --check   # exit 1 if the committed file is out of date
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
AREAS = ["bad input", "faults", "load", "security"]
HEADER = """# Reliability and security: what was tried

Every row is a test that runs in CI and still passes; this file is generated from their
`@pytest.mark.reliability(...)` markers by `scripts/reliability_table.py` (a test fails when it is
out of date). "Lost" is what the user lost: the tests assert it.

Also guarded elsewhere, with their own tests: a worker killed or stopped mid-download resumes from
the bytes on disk (`tests/worker/test_faults.py`, `tests/agent/test_resume_killed.py`); disk full
before and during a download (`tests/agent/test_disk_full.py`); a Hub that stalls, is killed or
restarted mid-file, or corrupts a transfer (`tests/worker/test_faults.py`,
`tests/cli/test_hub_conditions.py`); a corrupt manifest (`tests/agent/test_store.py`); a second
agent, a stale `agent.json`, taken ports and the tray's death (`tests/worker/test_lifecycle.py`).
"""


class _Collector:
    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            mark = item.get_closest_marker("reliability")
            if mark is None:
                continue
            row = {k: " ".join(str(v).split()) for k, v in mark.kwargs.items()}
            row["test"] = item.nodeid.split("[")[0]
            if row not in self.rows:
                self.rows.append(row)


def marked_files() -> list[str]:
    """Test files that mention the marker (collecting only those keeps this fast)."""
    def marked(text: str) -> bool:
        return "reliability" in text and "case(" in text or "mark.reliability" in text

    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if marked(p.read_text("utf-8", errors="replace")))


def collect(paths: list[str]) -> list[dict[str, str]]:
    collector = _Collector()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", f"--rootdir={ROOT}", *paths],
                           plugins=[collector])
    if code not in (0, 5):
        raise SystemExit(f"collection failed ({code}):\n{out.getvalue()[-3000:]}")
    return collector.rows


def render(rows: list[dict[str, str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = [HEADER]
    areas = AREAS + sorted({r["area"] for r in rows} - set(AREAS))
    per_area = ", ".join(f"{area} {n}" for area in areas if (n := sum(r["area"] == area for r in rows)))
    out.append(f"\n**{len(rows)} cases tried, {len(rows)} held** ({per_area}): each case is a test, so one that "
               "stopped holding would fail CI.\n")
    for area in areas:
        chosen = sorted((r for r in rows if r["area"] == area), key=lambda r: r["test"])
        if not chosen:
            continue
        out.append(f"\n## {area[0].upper() + area[1:]}\n\n"
                   "| case | what was done | what the agent did | lost | test |\n|---|---|---|---|---|")
        for r in chosen:
            file, _, name = r["test"].partition("::")
            out.append(f"| {cell(r['case'])} | {cell(r['did'])} | {cell(r['outcome'])} "
                       f"| {cell(r.get('lost', 'nothing'))} | `{Path(file).name}::{name}` |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed file is up to date")
    parser.add_argument("paths", nargs="*", help="test files to collect (default: those that use the marker)")
    args = parser.parse_args()
    text = render(collect(args.paths or marked_files()))
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run python scripts/reliability_table.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
