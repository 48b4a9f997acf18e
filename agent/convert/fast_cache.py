"""Where the fast path keeps its rewrites (:mod:`agent.convert.fast_path`). The folder is part of the
Hugging Face cache layout, which :mod:`agent.hub_cache` owns; these names stay for the converter."""

from __future__ import annotations

from agent.hub_cache import FAST_DIR
from agent.hub_cache import fast_dir_for as cache_dir_for

__all__ = ["FAST_DIR", "cache_dir_for"]
