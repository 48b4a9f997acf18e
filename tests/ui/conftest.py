"""Tray tests. Unit tests use pystray's ``dummy`` backend (no display); the desktop tests start the
real tray as a subprocess under Xvfb (``tests/support/desktop.py``), with the environment they choose."""

from __future__ import annotations

import os

# pystray picks its backend once, when first imported: import it now with the dummy backend, then put
# the environment back so that no subprocess of any test inherits PYSTRAY_BACKEND from here.
_saved = os.environ.get("PYSTRAY_BACKEND")
os.environ["PYSTRAY_BACKEND"] = "dummy"
try:
    import pystray  # noqa: F401
finally:
    if _saved is None:
        del os.environ["PYSTRAY_BACKEND"]
    else:
        os.environ["PYSTRAY_BACKEND"] = _saved
