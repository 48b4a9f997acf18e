"""The reducer: replies, events and supervisor observations in; snapshot and notifications out."""

from __future__ import annotations

from functools import reduce as fold

from ipc.messages import (
    DownloadCancelled,
    DownloadFailed,
    DownloadFinished,
    DownloadInfo,
    DownloadProgress,
    DownloadStarted,
    ModelActivated,
    ModelFailed,
    ModelLoading,
    ModelReady,
    WorkerStatus,
)
from tests.ui.snapshots import KEY_A, KEY_B, info, installed, status
from ui.observations import (
    ActionFailed,
    AutostartChanged,
    SwitchRequested,
    WorkerDown,
    WorkerGaveUp,
    WorkerRestarting,
    WorkerStarting,
    WorkerUp,
)
from ui.state import Notice, Snapshot, download_fraction, needs_refresh, reduce, variant_label


def run(*observations: object, start: Snapshot | None = None) -> tuple[Snapshot, list[Notice]]:
    notices: list[Notice] = []

    def step(s: Snapshot, obs: object) -> Snapshot:
        s, new = reduce(s, obs)
        notices.extend(new)
        return s

    return fold(step, observations, start or Snapshot()), notices


def test_worker_comes_up_and_reports_its_models() -> None:
    s, notices = run(WorkerStarting(pid=1, attempt=1), WorkerUp(info(pid=1)), installed(KEY_B, KEY_A),
                     status(active=KEY_A, model_state="ready"))
    assert s.runtime == "ready" and s.pid == 1 and s.active == KEY_A and s.model_state == "ready"
    assert [v.key for v in s.installed] == [KEY_A, KEY_B]  # sorted for the menu
    assert s.api_url == "http://127.0.0.1:9231/v1"
    assert s.settings_url == "http://127.0.0.1:9231/?token=tok"
    assert notices == []


def test_switch_goes_through_loading_to_active() -> None:
    s, _ = run(WorkerUp(info()), installed(KEY_A, KEY_B), status(active=KEY_A, model_state="ready"),
               SwitchRequested(key=KEY_B, job_id="j1"), ModelLoading(key=KEY_B, job_id="j1"))
    assert s.activating == KEY_B and s.active == KEY_A
    s, notices = run(ModelReady(key=KEY_B, job_id="j1"), ModelActivated(key=KEY_B), start=s)
    assert s.active == KEY_B and s.activating is None and s.model_state == "ready" and notices == []


def test_failed_switch_keeps_the_old_model_and_notifies() -> None:
    s, notices = run(WorkerUp(info()), status(active=KEY_A, model_state="ready"),
                     SwitchRequested(key=KEY_B, job_id="j1"),
                     ModelFailed(key=KEY_B, code="load_failed", message="bad graph", job_id="j1"))
    assert s.active == KEY_A and s.activating is None
    assert [n.kind for n in notices] == ["switch_failed"]
    assert "bad graph" in notices[0].body and "tiny-b" in notices[0].body
    _, notices = run(ActionFailed("switch", "not ready", KEY_B), start=s)
    assert notices[0].kind == "switch_failed"


def test_a_failed_load_of_the_active_model_is_state_not_a_switch_notice() -> None:
    s, notices = run(WorkerUp(info()), status(active=KEY_A, model_state="loading"),
                     ModelFailed(key=KEY_A, code="load_failed", message="oom"))
    assert s.model_state == "failed" and s.model_error == "oom" and notices == []


def test_download_progress_and_finish_notice() -> None:
    s, notices = run(
        WorkerUp(info()),
        DownloadStarted(job_id="d1", key=KEY_B, model_id="onnx-community/tiny-b", quantization="q4", total_bytes=2_000_000, files=["a"]),
        DownloadProgress(job_id="d1", key=KEY_B, done_bytes=500_000, total_bytes=2_000_000, rate_bps=1e6, eta_s=1.5, current_file="a"),
    )
    assert download_fraction(s) == 0.25 and s.downloads[0].rate_bps == 1e6
    s, notices = run(DownloadFinished(job_id="d1", key=KEY_B, size_bytes=2_000_000, elapsed_s=2.0), start=s)
    assert s.downloads == () and download_fraction(s) is None
    assert notices == [Notice("download_finished", "Download finished", "onnx-community/tiny-b (q4), 2.0 MB")]


def test_download_failure_notifies_cancel_does_not() -> None:
    start = DownloadStarted(job_id="d1", key=KEY_B, model_id="onnx-community/tiny-b", quantization="q4", total_bytes=10, files=[])
    _, notices = run(WorkerUp(info()), start, DownloadFailed(job_id="d1", key=KEY_B, code="network", message="hub unreachable"))
    assert [n.kind for n in notices] == ["download_failed"] and "hub unreachable" in notices[0].body
    s, notices = run(WorkerUp(info()), start, DownloadCancelled(job_id="d1", key=KEY_B))
    assert notices == [] and s.downloads == ()


def test_progress_for_a_download_missed_at_start_is_still_shown() -> None:
    s, _ = run(WorkerUp(info()), DownloadProgress(job_id="d9", key=KEY_B, done_bytes=1, total_bytes=4, rate_bps=0,
                                                  eta_s=None, current_file=""))
    assert s.downloads[0].model_id == "onnx-community/tiny-b" and s.downloads[0].quantization == "q4"


def test_status_reply_is_the_truth_for_downloads() -> None:
    s, _ = run(WorkerUp(info()), status(downloads=[DownloadInfo(job_id="x", key=KEY_A, model_id="onnx-community/tiny-a",
                                                                quantization="q4", done_bytes=3, total_bytes=4)]))
    assert [d.job_id for d in s.downloads] == ["x"]
    s, _ = run(status(), start=s)
    assert s.downloads == ()


def test_crash_restart_notifies_once_back_up() -> None:
    s, notices = run(WorkerUp(info(pid=1)), WorkerDown(reason="killed by SIGKILL", crashed=True),
                     WorkerRestarting(delay_s=1.0, crashes=1), WorkerStarting(pid=2, attempt=2))
    assert s.runtime == "starting" and notices == []
    s, notices = run(WorkerUp(info(pid=2, session="s2")), start=s)
    assert s.runtime == "ready" and s.pid == 2 and s.error is None
    assert [n.kind for n in notices] == ["restarted"] and "SIGKILL" in notices[0].body


def test_giving_up_notifies_and_a_clean_stop_does_not() -> None:
    s, notices = run(WorkerUp(info()), WorkerDown(reason="port busy", crashed=True),
                     WorkerGaveUp(reason="port busy", crashes=5, window_s=120))
    assert s.runtime == "failed" and s.error == "port busy" and [n.kind for n in notices] == ["gave_up"]
    s, notices = run(WorkerUp(info()), WorkerDown(reason="exit status 0", crashed=False))
    assert s.runtime == "stopped" and notices == []


def test_heartbeat_updates_state_and_asks_for_a_refresh_when_it_disagrees() -> None:
    s, _ = run(WorkerUp(info()), status(active=KEY_A, model_state="ready"))
    beat = WorkerStatus(pid=4242, state="ready", active=KEY_A, model_state="ready", downloads=0)
    assert needs_refresh(s, beat) == (True, True)  # installed models never arrived: ask again
    s, _ = run(installed(KEY_A), start=s)
    assert s.synced and needs_refresh(s, beat) == (False, False)
    assert needs_refresh(s, WorkerStatus(pid=4242, state="ready", active=KEY_A, model_state="ready", downloads=1)) == (True, False)
    assert needs_refresh(s, WorkerUp(info())) == (True, True)


def test_autostart_and_labels() -> None:
    s, _ = run(AutostartChanged(enabled=True))
    assert s.autostart is True
    assert variant_label(KEY_A) == "tiny-a (q4)"


def test_unknown_inputs_change_nothing() -> None:
    s = Snapshot()
    assert reduce(s, object()) == (s, ())
