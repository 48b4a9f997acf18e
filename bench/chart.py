"""The benchmark report as a Markdown table and a PNG chart (matplotlib, from the ``bench`` extra).

    python bench/chart.py bench/results/engine-latest.json   # re-draw and print the table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(report: dict[str, Any]) -> str:
    lines = [
        f"SmolLM2-135M-Instruct, {report['threads']} threads, {report['machine']['cpu']} "
        f"({report['date']}; load average during the run "
        f"{min(load[0] for load in report['load_during_run']):.1f}–"
        f"{max(load[0] for load in report['load_during_run']):.1f}); "
        f"prompts {report['prompt_tokens']['short']} / {report['prompt_tokens']['long']} tokens; "
        f"top-1 agreement and mean KL divergence from fp32 over {report['agreement_positions']} "
        "teacher-forced positions",
        "",
        "| engine | decode tok/s | × llama.cpp | TTFT 40 (ms) | TTFT 1k (ms) | peak RSS (MB) | load (s) "
        "| top-1 vs fp32 | KL vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in report["results"].items():
        agree, kl = r.get("top1_agreement"), r.get("kl_from_fp32")
        lines.append(
            f"| {label} | {_fmt(r['decode_tok_s'], '.1f')} | {_fmt(r['decode_vs_llama'], '.2f')} | "
            f"{_fmt(r['ttft_short_ms'], '.0f')} | {_fmt(r['ttft_long_ms'], '.0f')} | {_fmt(r['peak_rss_mb'], '.0f')} | "
            f"{_fmt(r['load_s'], '.2f')} | {'–' if agree is None else f'{100 * agree:.1f} %'} | "
            f"{'–' if kl is None else f'{kl:.1e}'} |"
        )
    overhead = report.get("http_overhead")
    if overhead:
        lines += ["", f"HTTP streaming vs in-process: decode {overhead['decode_pct']:+.1f} % slower, "
                      f"TTFT {overhead['ttft_short_ms']:+.1f} ms (40) / {overhead['ttft_long_ms']:+.1f} ms (1k)"]
    http = next((r for label, r in report["results"].items() if label.startswith("http")), None)
    if http and http.get("models_p99_ms") is not None:
        lines.append(f"GET /v1/models while streaming: p50 {http['models_p50_ms']:.1f} ms, "
                     f"p99 {http['models_p99_ms']:.1f} ms")
    return "\n".join(lines)


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = list(rows)
    colors = ["#d62728" if label == "llama.cpp" else "#1f77b4" if label.startswith("http") else "#2ca02c"
              for label in labels]
    panels = [
        ("decode tokens/s (higher is better)", "decode_tok_s"),
        ("first token, 40-token prompt (ms)", "ttft_short_ms"),
        ("first token, ~1k-token prompt (ms)", "ttft_long_ms"),
        ("peak RSS (MB)", "peak_rss_mb"),
        ("top-1 agreement with fp32 (%)", "top1_agreement"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    for ax, (title, key) in zip(axes, panels, strict=True):
        values = [(rows[label].get(key) or 0) * (100 if key == "top1_agreement" else 1) for label in labels]
        bars = ax.barh(labels, values, color=colors)
        ax.bar_label(bars, fmt="%.0f" if key != "top1_agreement" else "%.1f", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
        if ax is not axes[0]:
            ax.set_yticklabels([])
    fig.suptitle(f"SmolLM2-135M-Instruct, {report['threads']} threads, {report['machine']['cpu']} — "
                 f"{report['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    draw(data, Path(sys.argv[1]).with_suffix(".png"))
    print(table(data))
