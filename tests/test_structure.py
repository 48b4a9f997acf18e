"""The structure the code map (docs/architecture.md) describes, checked on the source itself.

- the process boundaries: ``ui`` and ``agent`` never import each other, ``ipc`` (the shared contract
  and the helpers both processes use) imports neither and no framework;
- product modules stay at most 400 lines;
- the code map names every product module, and names none that does not exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "ipc", "ui", "cli", "installers")
MAX_LINES = 400
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of the file (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


FORBIDDEN = {
    "ui": {"agent", "quart", "hypercorn", "onnxruntime", "torch"},
    "agent": {"ui", "pystray", "torch", "transformers", "optimum"},
    "ipc": {"agent", "ui", "cli", "pystray", "quart", "hypercorn", "onnxruntime", "torch"},
    "cli": {"torch", "transformers", "optimum"},  # it starts either process: `serve` and `tray`
}
# torch and optimum run only in the converter's child process (python -m agent.convert.checkpoint),
# and in the fast path's optional float16 helper, never in the serving path.
TORCH_ALLOWED = {"agent/convert/checkpoint.py"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_keep_to_their_side_of_the_process_boundary(package: str) -> None:
    wrong = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(f"{package}/"):
            continue
        bad = _imports(path) & FORBIDDEN[package]
        if rel in TORCH_ALLOWED:
            bad -= {"torch", "transformers", "optimum"}
        if bad:
            wrong.append(f"{rel} imports {', '.join(sorted(bad))}")
    assert not wrong, "\n".join(wrong)


def test_product_modules_stay_at_most_400_lines() -> None:
    long = [f"{p.relative_to(ROOT)}: {n}" for p in _modules() if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES]
    assert not long, "split these modules:\n" + "\n".join(long)


def test_the_code_map_names_every_module_and_only_real_ones() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    pattern = "`((?:" + "|".join(PACKAGES) + r")/[\w/]+\.py)`"
    named = set(re.findall(pattern, text))
    real = {p.relative_to(ROOT).as_posix() for p in _modules() if p.name != "__init__.py"}
    assert not real - named, f"docs/architecture.md does not name: {sorted(real - named)}"
    assert not named - real, f"docs/architecture.md names modules that do not exist: {sorted(named - real)}"
