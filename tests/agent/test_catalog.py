"""The pool's view of the store (``agent.runtime.StoreCatalog``): kept answers follow every change."""

from __future__ import annotations

import pytest

from agent.paths import Paths
from agent.pool import ModelUnavailableError
from agent.runtime import StoreCatalog
from agent.store import Store, VariantEntry, new_entry


def _entry(model: str, status: str = "ready") -> VariantEntry:
    return new_entry(model, "q4", "cpu", path=f"/models/{model}", files=["onnx/model_q4.onnx"], size=10,
                     source="import", status=status, downloaded_at="2025-01-01T00:00:00Z")


def test_installed_is_kept_until_an_entry_changes(paths: Paths) -> None:
    store = Store(paths)
    catalog = StoreCatalog(store)
    assert catalog.installed() == ()
    first = _entry("me/one")
    store.put(first)
    listed = catalog.installed()
    assert [v.key for v in listed] == [first.key] and listed[0].created == 1735689600
    assert catalog.installed() is listed  # nothing changed: the same answer, not a rebuilt one
    assert catalog.resolve("me/one") is listed[0]

    store.put(_entry("me/two", status="downloading"))
    assert [v.key for v in catalog.installed()] == [first.key]
    with pytest.raises(ModelUnavailableError):
        catalog.resolve(_entry("me/two").key)
    store.update(_entry("me/two").key, status="ready", downloaded_at="2025-01-02T00:00:00Z")
    assert [(v.model_id, v.created) for v in catalog.installed()] == [("me/one", 1735689600), ("me/two", 1735776000)]
    store.update(first.key, path="/elsewhere")
    assert str(catalog.resolve("me/one").path) == "/elsewhere"
    store.remove(first.key)
    assert [v.model_id for v in catalog.installed()] == ["me/two"]
