"""What this machine offers: CPU, RAM, GPUs, onnxruntime execution providers, cache size, free disk.

``hardware_info`` never fails: every probe that cannot answer (no ``nvidia-smi``, no ``/sys``, a
sandbox without ``sysctl``) leaves its field empty instead. ``resolve_device`` is a pure function,
shared with the engine, that turns a device preference into execution providers.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil

from agent.paths import Paths
from agent.variants import normalize_device
from ipc.messages import GpuInfo, HardwareInfo

CPU_PROVIDER = "CPUExecutionProvider"
DEVICE_PROVIDERS: dict[str, str] = {
    "cuda": "CUDAExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": CPU_PROVIDER,
}
AUTO_ORDER = ("cuda", "directml", "coreml")
"""GPU devices in the order ``auto`` (and ``gpu``) prefers them; CPU comes last."""

_PCI_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD", "0x8086": "Intel", "0x1af4": "virtio", "0x1234": "QEMU"}
_PROBE_TIMEOUT_S = 3.0


def resolve_device(requested: str, providers: list[str]) -> tuple[str, list[str], str]:
    """``(device, providers to pass to onnxruntime, why)`` for a device preference.

    ``auto`` picks CUDA > DirectML > CoreML > CPU among the available ``providers``; ``gpu`` does the
    same but says so when it has to fall back to the CPU; an explicit device whose provider is not
    available falls back to CPU with the reason. The provider list always ends with the CPU provider
    (onnxruntime places nodes a GPU provider cannot run there). Aliases (``webgpu``, ``wasm``) are
    accepted; an unknown device raises ``agent.variants.InvalidNameError``.
    """
    device = normalize_device(requested)
    available = set(providers)

    def pick(dev: str) -> list[str]:
        return [DEVICE_PROVIDERS[dev], CPU_PROVIDER] if dev != "cpu" else [CPU_PROVIDER]

    if device == "cpu":
        return "cpu", [CPU_PROVIDER], "cpu requested"
    if device in ("auto", "gpu"):
        for dev in AUTO_ORDER:
            if DEVICE_PROVIDERS[dev] in available:
                return dev, pick(dev), f"{device}: {DEVICE_PROVIDERS[dev]} is available"
        gpus = ", ".join(DEVICE_PROVIDERS[d] for d in AUTO_ORDER)
        if device == "gpu":
            return "cpu", [CPU_PROVIDER], f"gpu requested but onnxruntime has no GPU provider ({gpus}); using CPU"
        return "cpu", [CPU_PROVIDER], f"auto: no GPU provider in onnxruntime ({gpus} all missing); using CPU"
    wanted = DEVICE_PROVIDERS[device]
    if wanted in available:
        return device, pick(device), f"{device} requested and {wanted} is available"
    return "cpu", [CPU_PROVIDER], f"{device} requested but {wanted} is not available in this onnxruntime; using CPU"


def available_providers() -> list[str]:
    """``onnxruntime.get_available_providers()``, or just the CPU provider if it cannot be imported."""
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except Exception:  # a broken onnxruntime must not break `hflocal hw`
        return [CPU_PROVIDER]


def _run(cmd: list[str]) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's marketing name, e.g. ``AMD EPYC 7B13``; ``platform.processor()`` as a last resort."""
    if sys.platform.startswith("linux"):
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
            for key in ("model name", "Hardware", "Processor", "cpu model"):
                match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
                if match and match.group(1).strip():
                    return match.group(1).strip()
        except OSError:
            pass
    elif sys.platform == "darwin":
        out = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if out and out.strip():
            return out.strip()
    return platform.processor() or platform.machine() or "unknown"


def _nvidia_gpus() -> list[GpuInfo]:
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
    gpus = []
    for line in (out or "").splitlines():
        name, _, mem = line.partition(",")
        if name.strip():
            mib = mem.strip()
            memory = int(float(mib)) * 1024 * 1024 if re.fullmatch(r"\d+(\.\d+)?", mib) else None
            gpus.append(GpuInfo(name=name.strip(), vendor="NVIDIA", memory_bytes=memory, source="nvidia-smi"))
    return gpus


def _drm_gpus() -> list[GpuInfo]:
    """Display devices under ``/sys/class/drm`` (Linux), named by PCI vendor id."""
    gpus = []
    for card in sorted(Path("/sys/class/drm").glob("card[0-9]*")):
        if "-" in card.name:  # connectors such as card0-HDMI-A-1
            continue
        try:
            vendor_id = (card / "device" / "vendor").read_text().strip().lower()
            device_id = (card / "device" / "device").read_text().strip().lower()
        except OSError:
            continue
        vendor = _PCI_VENDORS.get(vendor_id, vendor_id)
        memory = None
        try:
            memory = int((card / "device" / "mem_info_vram_total").read_text().strip())
        except (OSError, ValueError):
            pass
        gpus.append(GpuInfo(name=f"{vendor} GPU {device_id}", vendor=vendor, memory_bytes=memory, source="drm"))
    return gpus


def detect_gpus() -> list[GpuInfo]:
    """GPUs that can be found without extra packages; ``[]`` when none can (never raises)."""
    try:
        gpus = _nvidia_gpus()
        if sys.platform.startswith("linux"):
            seen_nvidia = any(g.vendor == "NVIDIA" for g in gpus)
            gpus += [g for g in _drm_gpus() if not (seen_nvidia and g.vendor == "NVIDIA")]
        elif sys.platform == "darwin":
            out = _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or ""
            if "Apple" in out:
                gpus.append(GpuInfo(name=f"{out.strip()} GPU", vendor="Apple", source="sysctl"))
        return gpus
    except Exception:  # GPU detection is best effort, never fatal
        return []


def cache_size(cache: Path) -> int:
    """Bytes the cache holds on disk, counting each file once (snapshot symlinks are not followed,
    hard links are counted once); 0 for a missing folder."""
    total, seen = 0, set()
    for root, _dirs, files in os.walk(cache):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if os.path.islink(os.path.join(root, name)) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def disk_free(folder: Path) -> int:
    """Free bytes on the disk holding ``folder`` (or its nearest existing parent)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return 0


def hardware_info(paths: Paths) -> HardwareInfo:
    """A snapshot of this machine for ``hflocal hw`` and the settings page (takes ≲ 1 s)."""
    providers = available_providers()
    device, _, reason = resolve_device("auto", providers)
    try:
        memory = psutil.virtual_memory()
        ram_total, ram_available = int(memory.total), int(memory.available)
    except Exception:  # sandboxes may hide /proc/meminfo
        ram_total = ram_available = 0
    return HardwareInfo(
        os=f"{platform.system()} {platform.release()}".strip(),
        arch=platform.machine(),
        cpu=cpu_model(),
        cores_physical=psutil.cpu_count(logical=False),
        cores_logical=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_total=ram_total,
        ram_available=ram_available,
        gpus=detect_gpus(),
        providers=providers,
        auto_device=device,
        auto_reason=reason,
        cache_dir=str(paths.cache),
        cache_size=cache_size(paths.cache),
        disk_free=disk_free(paths.cache),
    )
