"""Hardware probing (this machine) and device resolution (pure)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.hardware import cache_size, hardware_info, resolve_device
from agent.paths import Paths
from agent.variants import InvalidNameError
from tests.agent.conftest import make_cache_repo

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DML = "DmlExecutionProvider"
COREML = "CoreMLExecutionProvider"


@pytest.mark.parametrize(
    ("requested", "providers", "device", "chosen"),
    [
        ("auto", [CPU], "cpu", [CPU]),
        ("auto", [CUDA, CPU], "cuda", [CUDA, CPU]),
        ("auto", [DML, CPU], "directml", [DML, CPU]),
        ("auto", [COREML, CPU], "coreml", [COREML, CPU]),
        ("auto", [COREML, DML, CUDA, CPU], "cuda", [CUDA, CPU]),
        ("gpu", [DML, CPU], "directml", [DML, CPU]),
        ("webgpu", [CUDA, CPU], "cuda", [CUDA, CPU]),
        ("gpu", [CPU], "cpu", [CPU]),
        ("cpu", [CUDA, CPU], "cpu", [CPU]),
        ("wasm", [CUDA, CPU], "cpu", [CPU]),
        ("cuda", [CUDA, CPU], "cuda", [CUDA, CPU]),
        ("cuda", [CPU], "cpu", [CPU]),
        ("coreml", [DML, CPU], "cpu", [CPU]),
        ("DirectML", [DML, CPU], "directml", [DML, CPU]),
    ],
)
def test_resolve_device(requested: str, providers: list[str], device: str, chosen: list[str]) -> None:
    got, got_providers, reason = resolve_device(requested, providers)
    assert (got, got_providers) == (device, chosen)
    assert reason
    if device == "cpu" and requested.lower() not in ("cpu", "wasm"):
        assert "using CPU" in reason


def test_resolve_device_reasons_name_the_missing_provider() -> None:
    assert "CUDAExecutionProvider is not available" in resolve_device("cuda", [CPU])[2]
    assert "CUDAExecutionProvider is available" in resolve_device("auto", [CUDA, CPU])[2]
    with pytest.raises(InvalidNameError):
        resolve_device("tpu", [CPU])


def test_hardware_info_of_this_machine(paths: Paths) -> None:
    make_cache_repo(paths.cache, "org/a", "c" * 40, {"x.bin": b"1" * 1000, "y.bin": b"1" * 1000, "z": b"2" * 10})
    info = hardware_info(paths)
    assert info.cores_logical >= 1 and info.ram_total > info.ram_available > 0
    assert CPU in info.providers
    assert info.auto_device in ("cpu", "cuda", "directml", "coreml") and info.auto_reason
    assert info.cpu and info.os and info.arch
    assert info.cache_dir == str(paths.cache)
    assert 1010 <= info.cache_size <= 1010 + 100  # x.bin and y.bin share a blob; + refs/main
    assert info.disk_free > 0
    for gpu in info.gpus:
        assert gpu.name and gpu.source in ("nvidia-smi", "drm", "sysctl")


def test_cache_size_counts_hard_links_once_and_skips_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    os.link(tmp_path / "a", tmp_path / "b")
    os.symlink(tmp_path / "a", tmp_path / "c")
    assert cache_size(tmp_path) == 100
    assert cache_size(tmp_path / "missing") == 0


def test_hardware_info_without_probes(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """No nvidia-smi, no sysctl, an onnxruntime that fails: still an answer."""
    import builtins

    monkeypatch.setenv("PATH", "")
    real_import = builtins.__import__

    def broken_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "onnxruntime":
            raise ImportError("broken for the test")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", broken_import)
    info = hardware_info(paths)
    assert info.providers == [CPU] and info.auto_device == "cpu"


def test_nvidia_smi_output_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU on these machines: a stand-in nvidia-smi prints what the real one does for this query."""
    from agent.hardware import detect_gpus

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf 'NVIDIA H100 80GB HBM3, 81559\\nNVIDIA A10G, [N/A]\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    gpus = [g for g in detect_gpus() if g.source == "nvidia-smi"]
    assert [(g.name, g.vendor, g.memory_bytes) for g in gpus] == [
        ("NVIDIA H100 80GB HBM3", "NVIDIA", 81559 * 1024 * 1024),
        ("NVIDIA A10G", "NVIDIA", None),
    ]
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert [g for g in detect_gpus() if g.source == "nvidia-smi"] == []
