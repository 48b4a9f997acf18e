"""Builders for tray unit tests: real protocol structs, as the worker would send them."""

from __future__ import annotations

from ipc.connection import ConnectionInfo
from ipc.messages import InstalledModel, InstalledResult, StatusResult

KEY_A = "huggingface-local/onnx-community/tiny-a::q4::auto"
KEY_B = "huggingface-local/onnx-community/tiny-b::q4::auto"
KEY_C = "huggingface-local/onnx-community/tiny-c::q8::auto"


def info(pid: int = 4242, session: str = "s1", token: str = "tok") -> ConnectionInfo:
    return ConnectionInfo(
        http_url="http://127.0.0.1:9231",
        request_endpoint="tcp://127.0.0.1:9232",
        event_endpoint="tcp://127.0.0.1:9233",
        token=token,
        pid=pid,
        session=session,
    )


def installed(*keys: str, status: str = "ready") -> InstalledResult:
    models = []
    for key in keys:
        model_id, quant, device = key.removeprefix("huggingface-local/").split("::")
        models.append(InstalledModel(key=key, model_id=model_id, name=model_id.split("/")[-1], quantization=quant,
                                     device=device, files=[], size=1000, commit=None, downloaded_at=None, status=status))
    return InstalledResult(models=models)


def status(active: str | None = None, model_state: str = "none", **kw: object) -> StatusResult:
    return StatusResult(session="s1", pid=4242, version="0.1.0", uptime_s=1.0, http_url="http://127.0.0.1:9231",
                        home="/tmp/h", active=active, model_state=model_state, **kw)  # type: ignore[arg-type]
