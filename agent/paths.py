"""Where hflocal keeps its state. ``HFLOCAL_HOME`` relocates all of it, so tests are hermetic."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ipc.home import APP_NAME, default_home, resolve_home

__all__ = ["APP_NAME", "Paths", "default_home"]


@dataclass(frozen=True, slots=True)
class Paths:
    """Every file and folder under the data root. ``cache`` may be moved by ``settings.cache_dir``."""

    home: Path
    cache: Path

    @classmethod
    def for_home(cls, home: Path | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Paths:
        home = resolve_home(home)
        cache = Path(cache_dir).expanduser().resolve() if cache_dir else home / "cache"
        return cls(home=home, cache=cache)

    @property
    def manifest(self) -> Path:
        return self.home / "manifest.json"

    @property
    def settings(self) -> Path:
        return self.home / "settings.toml"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def connection(self) -> Path:
        """``agent.json``: how clients reach the running worker (mode 0600)."""
        return self.home / "agent.json"

    @property
    def imported(self) -> Path:
        """Models made by ``hflocal import`` (they are not in the Hub cache)."""
        return self.home / "imported"

    @property
    def lock(self) -> Path:
        """Held (flock) by the running worker: one worker per home."""
        return self.home / "agent.lock"

    def ensure(self) -> None:
        """Create the folders, user-only where they hold secrets or state."""
        for folder in (self.home, self.logs, self.cache, self.imported):
            folder.mkdir(parents=True, exist_ok=True)
        for private in (self.home, self.logs):  # the log names models, paths and clients' errors
            try:
                os.chmod(private, 0o700)
            except OSError:
                pass
