"""Static files: the logo PNGs (drawn by ``assets/draw_logo.py``).

``assets.path(name)`` finds one whether hflocal runs from a checkout or an installed wheel.
"""

from __future__ import annotations

from pathlib import Path


def path(name: str) -> Path:
    return Path(__file__).resolve().parent / name
