"""How ``hflocal use`` reads a ``status`` reply while it waits for its activation job: the policy as a
plain function, for the states a real agent goes through (a load longer than the poll interval
included, which a tiny model never shows)."""

from __future__ import annotations

import pytest

from cli.commands import CliError
from cli.progress import _activation_outcome
from ipc.messages import ActivationFailure, StatusResult

OLD = "huggingface-local/org/old::q4::auto"
NEW = "huggingface-local/org/new::q4::auto"
JOB = "abc123"


def status(**fields: object) -> StatusResult:
    return StatusResult(session="s", pid=1, version="v", uptime_s=1.0, http_url="http://x", home="/h", **fields)


def test_a_long_load_is_waited_for_not_called_another_model() -> None:
    assert _activation_outcome(status(active=OLD, activating=NEW, model_state="ready"), NEW, JOB) is None
    assert _activation_outcome(status(active=None, activating=NEW), NEW, JOB) is None


def test_ready_is_the_end() -> None:
    done = status(active=NEW, model_state="ready", provider="CPUExecutionProvider")
    assert _activation_outcome(done, NEW, JOB) == "CPUExecutionProvider"


def test_this_jobs_failure_ends_it_with_its_code() -> None:
    failed = ActivationFailure(key=NEW, code="load_failed", message="bad graph", job_id=JOB)
    with pytest.raises(CliError, match=f"{NEW} could not be loaded: bad graph; {OLD} stays active") as caught:
        _activation_outcome(status(active=OLD, model_state="ready", activation_failed=failed), NEW, JOB)
    assert caught.value.code == "load_failed"


def test_an_earlier_failure_of_the_same_key_does_not_end_a_new_attempt() -> None:
    earlier = ActivationFailure(key=NEW, code="load_failed", message="bad graph", job_id="older")
    assert _activation_outcome(status(active=OLD, activating=NEW, activation_failed=earlier), NEW, JOB) is None


def test_another_activation_replacing_it() -> None:
    with pytest.raises(CliError, match="another model"):
        _activation_outcome(status(active=OLD, model_state="ready"), NEW, JOB)
    with pytest.raises(CliError, match="another model"):
        _activation_outcome(status(active=OLD, activating=OLD), NEW, JOB)
