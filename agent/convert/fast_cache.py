"""Where the fast path keeps its rewrites (:mod:`agent.convert.fast_path`); no heavy imports, so the
store can find and remove them."""

from __future__ import annotations

from pathlib import Path

FAST_DIR = ".hflocal-fast"


def cache_dir_for(folder: Path) -> Path:
    """Where the rewrites of ``folder``'s graphs live: beside a Hub snapshot (``<repo>/.hflocal-fast/
    <commit>``, outside the snapshot the Hub client manages), or inside a folder hflocal owns.
    One subfolder per quantization."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent / FAST_DIR / folder.name
    return folder / FAST_DIR
