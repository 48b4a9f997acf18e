"""The menu from a snapshot, as data and as real pystray items (``PYSTRAY_BACKEND=dummy``)."""

from __future__ import annotations

from dataclasses import replace

import pystray

from ipc.messages import DownloadStarted
from tests.ui.snapshots import KEY_A, KEY_B, KEY_C, info, installed, status
from ui.menu import (
    SEPARATOR,
    CancelDownload,
    CopyApiUrl,
    Entry,
    OpenLogs,
    OpenSettings,
    Quit,
    RestartRuntime,
    SetAutostart,
    SwitchModel,
    menu_entries,
    status_text,
    title_text,
)
from ui.observations import AutostartChanged, SwitchRequested, WorkerGaveUp, WorkerUp
from ui.state import Snapshot, reduce
from ui.tray import backend_name, to_pystray


def snap(*observations: object) -> Snapshot:
    s = Snapshot()
    for obs in observations:
        s, _ = reduce(s, obs)
    return s


READY = (WorkerUp(info()), installed(KEY_A, KEY_B, KEY_C), status(active=KEY_A, model_state="ready"), AutostartChanged(False))


def entry(item: object) -> Entry:
    assert isinstance(item, Entry)
    return item


def sub(item: object) -> tuple[Entry, ...]:
    submenu = entry(item).submenu
    assert submenu is not None
    return tuple(entry(i) for i in submenu)


def texts(items: tuple[object, ...]) -> list[str]:
    return ["---" if i is SEPARATOR else i.text for i in items]  # type: ignore[attr-defined]


def test_backend_is_the_dummy() -> None:
    assert backend_name() == "dummy"


def test_ready_menu_has_every_item_in_order() -> None:
    entries = menu_entries(snap(*READY))
    assert texts(entries) == [
        "Ready \u2014 tiny-a (q4)", "---", "Model", "Downloads", "---", "Settings\u2026", "Copy API URL",
        "Start at login", "---", "Restart runtime", "Open logs", "---", "Quit",
    ]
    first = entries[0]
    assert isinstance(first, Entry) and not first.enabled
    models = entries[2].submenu  # type: ignore[union-attr]
    assert models is not None
    assert [(m.text, m.checked, m.radio, m.enabled) for m in models] == [  # type: ignore[union-attr]
        ("tiny-a (q4)", True, True, True), ("tiny-b (q4)", False, True, True), ("tiny-c (q8)", False, True, True),
    ]
    assert [m.action for m in models] == [SwitchModel(KEY_A), SwitchModel(KEY_B), SwitchModel(KEY_C)]  # type: ignore[union-attr]
    actions = [e.action for e in entries if isinstance(e, Entry)]
    assert OpenSettings() in actions and CopyApiUrl() in actions and SetAutostart(True) in actions
    assert RestartRuntime() in actions and OpenLogs() in actions and actions[-1] == Quit()


def test_tooltip_names_the_model_and_the_address() -> None:
    assert title_text(snap(*READY)) == "hflocal\nModel: tiny-a (q4)\nhttp://127.0.0.1:9231/v1"
    assert title_text(Snapshot()) == "hflocal\nStarting the runtime\u2026"


def test_loading_is_shown_on_the_model_and_switching_waits() -> None:
    s = snap(*READY, SwitchRequested(key=KEY_B, job_id="j"))
    models = sub(menu_entries(s)[2])
    assert models[1].text == "tiny-b (q4) \u2014 loading\u2026"
    assert not any(m.enabled for m in models)
    assert status_text(s) == "Loading tiny-b (q4)\u2026"


def test_downloads_show_progress_and_cancel() -> None:
    s = snap(*READY, DownloadStarted(job_id="d1", key=KEY_C, model_id="onnx-community/tiny-c", quantization="q8",
                                     total_bytes=4_000_000, files=[], resumed_bytes=1_000_000))
    downloads = entry(menu_entries(s)[3])
    assert downloads.text == "Downloads (1)"
    row = sub(downloads)[0]
    assert row.text == "tiny-c (q8) \u2014 25%"
    assert sub(row)[0].text.startswith("1.0 MB of 4.0 MB")
    assert sub(row)[1].action == CancelDownload("d1", KEY_C)
    assert "1 download running" in title_text(s)


def test_nothing_installed_and_nothing_downloading() -> None:
    s = snap(WorkerUp(info()), installed(), status())
    entries = menu_entries(s)
    assert texts(entries[2].submenu) == ["No models installed"]  # type: ignore[arg-type,union-attr]
    assert texts(entries[3].submenu) == ["No downloads running"]  # type: ignore[arg-type,union-attr]
    assert status_text(s) == "Ready \u2014 no model selected"


def test_gave_up_offers_restart_and_disables_what_needs_the_worker() -> None:
    s = snap(*READY, WorkerGaveUp(reason="HTTP port 9231 is already in use", crashes=5, window_s=120))
    entries = {e.text: e for e in menu_entries(s) if isinstance(e, Entry)}
    assert "Runtime failed: HTTP port 9231 is already in use" in entries
    assert entries["Restart runtime"].enabled and not entries["Settings\u2026"].enabled
    assert not any(m.enabled for m in entries["Model"].submenu)  # type: ignore[union-attr]


def test_equal_snapshots_give_equal_menus_and_progress_changes_it() -> None:
    a = snap(*READY)
    assert menu_entries(a) == menu_entries(replace(a))
    b = snap(*READY, AutostartChanged(True))
    assert menu_entries(a) != menu_entries(b)
    assert menu_entries(b)[7] == Entry("Start at login", SetAutostart(False), checked=True)


def test_pystray_items_carry_the_state_and_clicks_only_submit() -> None:
    submitted: list[object] = []
    menu = to_pystray(menu_entries(snap(*READY, AutostartChanged(True))), submitted.append)
    assert isinstance(menu, pystray.Menu)
    items = list(menu.items)
    assert items[0].text.startswith("Ready") and not items[0].enabled
    assert items[1] is pystray.Menu.SEPARATOR
    model_items = list(items[2].submenu.items)
    assert [(i.text, i.checked, i.radio) for i in model_items] == [
        ("tiny-a (q4)", True, True), ("tiny-b (q4)", False, True), ("tiny-c (q8)", False, True)]
    icon = pystray.Icon("test")
    model_items[1](icon)
    autostart = next(i for i in items if i.text == "Start at login")
    assert autostart.checked is True and autostart.radio is False
    autostart(icon)
    next(i for i in items if i.text == "Quit")(icon)
    assert submitted == [SwitchModel(KEY_B), SetAutostart(False), Quit()]
