"""The tray menu as plain, comparable data, built from a ``Snapshot`` and nothing else.

``menu_entries(snapshot)`` returns a tuple of ``Entry``/``SEPARATOR``; each clickable entry carries
an ``Action`` value (not a callback), so two menus compare equal exactly when the user would see
and be able to do the same things. The tray rebuilds the toolkit menu only when the entries change
(``ui.tray`` turns them into pystray items whose callbacks only submit the action). No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipc.messages import DownloadInfo
from ui.state import Snapshot, Variant, human_bytes, short_name, variant_label

# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class SwitchModel:
    key: str


@dataclass(frozen=True, slots=True)
class CancelDownload:
    job_id: str
    key: str


@dataclass(frozen=True, slots=True)
class OpenSettings:
    pass


@dataclass(frozen=True, slots=True)
class CopyApiUrl:
    pass


@dataclass(frozen=True, slots=True)
class SetAutostart:
    enable: bool


@dataclass(frozen=True, slots=True)
class RestartRuntime:
    pass


@dataclass(frozen=True, slots=True)
class OpenLogs:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


Action = SwitchModel | CancelDownload | OpenSettings | CopyApiUrl | SetAutostart | RestartRuntime | OpenLogs | Quit


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class Separator:
    pass


SEPARATOR = Separator()


@dataclass(frozen=True, slots=True)
class Entry:
    text: str
    action: Action | None = None
    enabled: bool = True
    checked: bool | None = None
    """``None``: a plain item; ``True``/``False``: a check (or radio) item."""
    radio: bool = False
    submenu: tuple[Entry | Separator, ...] | None = None


Item = Entry | Separator

MAX_STATUS_CHARS = 72


def _clip(text: str, limit: int = MAX_STATUS_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def status_text(s: Snapshot) -> str:
    """The first, disabled line of the menu: what the agent is doing, in a few words."""
    where = " (headless agent)" if s.attached else ""
    match s.runtime:
        case "starting":
            return "Starting the runtime\u2026"
        case "restarting":
            if s.error:
                return _clip(f"Runtime stopped unexpectedly ({s.error}); restarting\u2026")
            return _clip("Restarting the runtime\u2026")
        case "stopping":
            return "Stopping the runtime\u2026"
        case "stopped":
            return "Runtime stopped"
        case "failed":
            return _clip(f"Runtime failed: {s.error}" if s.error else "Runtime failed")
    if s.activating:
        return _clip(f"Loading {variant_label(s.activating)}\u2026{where}")
    if s.active is None:
        return f"Ready \u2014 no model selected{where}"
    label = variant_label(s.active)
    match s.model_state:
        case "loading":
            return _clip(f"Loading {label}\u2026{where}")
        case "failed":
            return _clip(f"{label} failed to load: {s.model_error or 'see the log'}")
    return _clip(f"Ready \u2014 {label}{where}")


def title_text(s: Snapshot) -> str:
    """The icon's tooltip: the model and the address."""
    lines = ["hflocal"]
    if s.runtime == "ready":
        lines.append(f"Model: {variant_label(s.active)}" if s.active else "No model selected")
        if s.api_url:
            lines.append(s.api_url)
    else:
        lines.append(status_text(s))
    if s.downloads:
        lines.append(f"{len(s.downloads)} download{'s' if len(s.downloads) > 1 else ''} running")
    return "\n".join(lines)


def _model_item(s: Snapshot, v: Variant) -> Entry:
    label = variant_label(v.key)
    ready = v.status == "ready"
    if v.key == s.activating or v.key == s.active and s.model_state == "loading":
        label += " \u2014 loading\u2026"
    elif v.key == s.active and s.model_state == "failed":
        label += " \u2014 failed"
    elif not ready:
        label += f" \u2014 {v.status}"
    usable = ready and s.runtime == "ready" and s.activating is None
    return Entry(label, SwitchModel(v.key), enabled=usable, checked=v.key == s.active, radio=True)


def _models_menu(s: Snapshot) -> Entry:
    if not s.installed:
        return Entry("Model", submenu=(Entry("No models installed", enabled=False),))
    return Entry("Model", submenu=tuple(_model_item(s, v) for v in s.installed))


def download_text(row: DownloadInfo) -> str:
    name = f"{short_name(row.model_id)} ({row.quantization})"
    if row.total_bytes <= 0:
        return f"{name} \u2014 starting\u2026"
    percent = int(100 * min(row.done_bytes, row.total_bytes) / row.total_bytes)
    return f"{name} \u2014 {percent}%"


def _download_details(row: DownloadInfo) -> str:
    parts = [f"{human_bytes(row.done_bytes)} of {human_bytes(row.total_bytes)}"]
    if row.rate_bps > 0:
        parts.append(f"{human_bytes(row.rate_bps)}/s")
    if row.eta_s is not None and row.rate_bps > 0:
        parts.append(f"{int(row.eta_s)} s left")
    return ", ".join(parts)


def _downloads_menu(s: Snapshot) -> Entry:
    if not s.downloads:
        return Entry("Downloads", submenu=(Entry("No downloads running", enabled=False),))
    rows = tuple(
        Entry(download_text(r), submenu=(
            Entry(_download_details(r), enabled=False),
            Entry("Cancel", CancelDownload(r.job_id, r.key), enabled=s.runtime == "ready"),
        ))
        for r in s.downloads
    )
    return Entry(f"Downloads ({len(s.downloads)})", submenu=rows)


def menu_entries(s: Snapshot) -> tuple[Item, ...]:
    """The whole menu for ``s``. Order: status, Model, Downloads | Settings, Copy API URL, Start at
    login | Restart runtime, Open logs | Quit."""
    ready = s.runtime == "ready"
    return (
        Entry(status_text(s), enabled=False),
        SEPARATOR,
        _models_menu(s),
        _downloads_menu(s),
        SEPARATOR,
        Entry("Settings\u2026", OpenSettings(), enabled=ready and s.settings_url is not None),
        Entry("Copy API URL", CopyApiUrl(), enabled=s.api_url is not None),
        Entry("Start at login", SetAutostart(not s.autostart), enabled=s.autostart is not None,
              checked=bool(s.autostart)),
        SEPARATOR,
        Entry("Restart runtime", RestartRuntime(), enabled=s.runtime not in ("stopping", "starting")),
        Entry("Open logs", OpenLogs()),
        SEPARATOR,
        Entry("Quit", Quit()),
    )


__all__ = [
    "SEPARATOR",
    "Action",
    "CancelDownload",
    "CopyApiUrl",
    "Entry",
    "Item",
    "OpenLogs",
    "OpenSettings",
    "Quit",
    "RestartRuntime",
    "Separator",
    "SetAutostart",
    "SwitchModel",
    "menu_entries",
    "status_text",
    "title_text",
]
