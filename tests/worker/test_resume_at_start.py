"""Resuming at start races with stopping: a stop must not turn a resumable download into an error."""

from __future__ import annotations

from pathlib import Path

from agent.downloads import Downloads
from agent.paths import Paths
from agent.settings import Settings
from agent.store import Store, new_entry
from tests.support.worker import BIG, variant_key


def test_a_resume_refused_because_the_worker_stops_stays_resumable(hermetic_home: Path) -> None:
    paths = Paths.for_home(hermetic_home)
    store = Store(paths)
    store.put(new_entry(BIG, "q4", "auto", path=str(paths.cache / "somewhere"), files=["onnx/model_q4.onnx"]))
    downloads = Downloads(store, paths, Settings(), lambda event: None)
    downloads.shutdown()  # the stop came first; the resume thread only now gets to the entry
    assert downloads.resume_interrupted() == []
    assert [w for w in downloads.warnings if "stopping" in w]
    assert Store(paths).require(variant_key(BIG, "q4")).status == "downloading"  # the next start resumes it
