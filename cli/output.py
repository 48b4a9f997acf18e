"""Human-readable output for the CLI (``--json`` bypasses all of this)."""

from __future__ import annotations

from ipc.messages import HardwareInfo, InstalledResult, ModelFilesResult, SearchResult, StatusResult


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    return "\n".join(lines)


def print_search(result: SearchResult) -> None:
    kind = result.kind
    what = "embedding" if kind == "embed" else "text-generation"
    if not result.models:
        print(f"no ONNX {what} models match {result.query!r}")
        return
    if not result.hub_reached:
        print("The Hub could not be reached (offline, or see HF_ENDPOINT); these are hflocal's suggestions, "
              "without Hub data:")
        print("\n".join(f"  {m.id}  ({m.kind})" for m in result.models))
        return
    if not result.query and kind == "embed":
        print("Suggested embedding models (search with `hflocal search --kind embed WORDS`):")
    elif not result.query:
        print("Suggested models (search with `hflocal search WORDS`):")
    rows = [[m.id, m.kind, f"{m.downloads:,}" if m.from_hub else "?", f"{m.likes:,}" if m.from_hub else "?"]
            for m in result.models]
    print(table(rows, ["MODEL", "KIND", "DOWNLOADS", "LIKES"]))


def print_files(result: ModelFilesResult) -> None:
    kind = "embedding model" if result.kind == "embed" else "chat model"
    print(f"{result.model_id} @ {result.commit[:12]} ({kind}){'  (gated: needs HF_TOKEN)' if result.gated else ''}")
    rows = [[o.quantization, human_bytes(o.size), str(len(o.files)), "installed" if o.installed else ""]
            for o in result.options]
    print(table(rows, ["QUANT", "SIZE", "FILES", ""]))
    if result.graph:
        print(f"graph: {result.graph}" + (f" ({result.graph_note})" if result.graph_note else ""))


def print_installed(result: InstalledResult) -> None:
    if not result.models:
        print("no models installed; try `hflocal search` and `hflocal pull MODEL_ID`")
        return
    rows = []
    for m in result.models:
        state = m.status if not m.error else f"{m.status}: {m.error}"
        if m.load_error:
            state += f" (last load failed: {m.load_error})"
        rows.append([("* " if m.active else "  ") + m.key, m.kind, human_bytes(m.size), state])
    print(table(rows, ["  KEY", "KIND", "SIZE", "STATUS"]))


def print_status(s: StatusResult) -> None:
    print(f"agent      pid {s.pid}, up {human_seconds(s.uptime_s)}, version {s.version}")
    print(f"api        {s.http_url}/v1")
    print(f"home       {s.home}")
    model = s.active or "none (choose one with `hflocal use KEY`)"
    print(f"model      {model}" + (f" [{s.model_state}]" if s.active else ""))
    if s.provider:
        print(f"provider   {s.provider}")
    if s.graph:
        print(f"graph      {s.graph}" + (f" ({s.graph_note})" if s.graph_note else ""))
    if s.model_error:
        print(f"error      {s.model_error}")
    if s.activation_failed is not None:
        print(f"failed     {s.activation_failed.key} could not be loaded: {s.activation_failed.message}")
    for d in s.downloads:
        pct = 100 * d.done_bytes / d.total_bytes if d.total_bytes else 0
        print(f"download   {d.key}  {pct:.0f}% of {human_bytes(d.total_bytes)}  {human_bytes(d.rate_bps)}/s")
    for w in s.warnings:
        print(f"warning    {w}")


def print_hardware(h: HardwareInfo) -> None:
    print(f"os         {h.os} ({h.arch})")
    cores = (f"{h.cores_physical} physical / {h.cores_logical} logical" if h.cores_physical
             else f"{h.cores_logical} logical")
    print(f"cpu        {h.cpu}, {cores}")
    print(f"ram        {human_bytes(h.ram_available)} free of {human_bytes(h.ram_total)}")
    for g in h.gpus:
        mem = f", {human_bytes(g.memory_bytes)}" if g.memory_bytes else ""
        print(f"gpu        {g.name}{mem}")
    if not h.gpus:
        print("gpu        none detected")
    print(f"providers  {', '.join(h.providers)}")
    print(f"auto       {h.auto_device} ({h.auto_reason})")
    print(f"cache      {h.cache_dir} ({human_bytes(h.cache_size)}; {human_bytes(h.disk_free)} free)")
