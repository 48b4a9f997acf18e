"""A real terminal for tests: a private tmux server (its own socket), one window, read as text."""

from __future__ import annotations

import shlex
import subprocess
import uuid
from pathlib import Path

from tests.imports.support import wait_until


class Tmux:
    """``Tmux(command, env)`` runs ``command`` in a 120x40 terminal; always ``close()`` it."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.socket = f"hflocal-test-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        line = f"cd {shlex.quote(str(cwd))} && env {exports} {shlex.join(command)}; echo EXITED rc=$?; sleep 600"
        self._tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "40", line)

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def screen(self) -> str:
        """The window's text, history included, without trailing blank lines."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-1000", "-t", "t").rstrip("\n")

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)
        self._tmux("send-keys", "-t", "t", "Enter")

    def keys(self, *names: str) -> None:
        """Named keys, e.g. ``C-c`` or ``C-d``."""
        self._tmux("send-keys", "-t", "t", *names)

    def wait_for(self, predicate_text: str, timeout: float, *, count: int = 1) -> str:
        """Wait until ``predicate_text`` appears ``count`` times on the screen; returns the screen."""
        def shown() -> str:
            screen = self.screen()
            return screen if screen.count(predicate_text) >= count else ""

        return wait_until(shown, timeout, f"{predicate_text!r} on screen")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20, check=False)
