"""Tray tests. Unit tests use pystray's ``dummy`` backend (no display); the desktop tests start the
real tray as a subprocess under Xvfb (``tests/ui/desktop.py``), with the environment they choose."""

from __future__ import annotations

import os

# pystray picks its backend when first imported; the unit tests must never need a display.
os.environ["PYSTRAY_BACKEND"] = "dummy"
