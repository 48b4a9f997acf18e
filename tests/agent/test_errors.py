"""User-facing errors: codes from the protocol, one-line messages, builtin bases, picklable."""

from __future__ import annotations

import errno
import pickle

import pytest

from agent import errors
from ipc.messages import ERROR_CODES


def test_every_error_class_has_a_protocol_code_and_one_line_message() -> None:
    samples = [
        errors.NotFoundError("no installed variant x"),
        errors.RepoNotFoundError("a/b", "v1"),
        errors.GatedRepoError("a/b"),
        errors.NoOnnxError("a/b"),
        errors.QuantNotOfferedError("a/b", "q4", ["q8", "fp32"]),
        errors.NetworkError("http://127.0.0.1:1", "connection refused"),
        errors.HubError("the Hub answered 500\nwith a body"),
        errors.DiskFullError("/cache", 10 << 30, 1 << 30),
        errors.IntegrityError("bad"),
        errors.ConflictError("busy"),
        errors.BadRequestError("bad"),
    ]
    for err in samples:
        assert err.code in ERROR_CODES
        assert "\n" not in str(err) and str(err)
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err) and str(copy) == str(err) and copy.code == err.code
    assert "HF_TOKEN" in str(errors.GatedRepoError("a/b"))
    assert "q8, fp32" in str(errors.QuantNotOfferedError("a/b", "q4", ["q8", "fp32"]))
    assert "10.0 GiB needed, 1.0 GiB free" in str(errors.DiskFullError("/cache", 10 << 30, 1 << 30))
    assert "http://127.0.0.1:1" in str(errors.NetworkError("http://127.0.0.1:1"))


def test_builtin_bases() -> None:
    assert isinstance(errors.NotFoundError("x"), LookupError)
    assert str(errors.NotFoundError("x y")) == "x y"  # no KeyError quoting
    disk = errors.DiskFullError("/c")
    assert isinstance(disk, OSError) and disk.errno == errno.ENOSPC
    assert isinstance(errors.NetworkError("e"), ConnectionError)


def test_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        errors.AgentError("x", code="nope")
