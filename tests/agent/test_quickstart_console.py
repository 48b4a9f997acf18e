"""The quickstart's progress lines: a stage that reports nothing for a while still gets a line saying
what goes on (the tokenizer build after ``inspect`` took 38 s of silence on two cores)."""

from __future__ import annotations

import asyncio
import io

import pytest

from agent import quickstart
from agent.quickstart import Console


async def lines_until(out: io.StringIO, text: str) -> list[str]:
    for _ in range(400):  # bounded: 400 polls of 10 ms
        if text in out.getvalue():
            return out.getvalue().splitlines()
        await asyncio.sleep(0.01)
    raise AssertionError(f"{text!r} never printed: {out.getvalue()!r}")


def test_silence_after_a_stage_is_filled_with_what_follows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quickstart, "STILL_WORKING_S", 0.05)

    async def run() -> list[str]:
        out = io.StringIO()
        console = Console(out)
        ticker = asyncio.ensure_future(console.still_working("inspecting the GGUF file"))
        try:
            await lines_until(out, "inspecting the GGUF file...")
            console.progress("inspect", 1, 1)
            await lines_until(out, "building the tokenizer...")
            console.progress("tokenizer", 1, 1)
            await lines_until(out, "converting the weights...")
            console.progress("convert q4", 3, 30)
            await lines_until(out, "convert q4...")  # a stage under way is named as it is
            console.progress("convert q4", 30, 30)
            return await lines_until(out, "writing the model files...")
        finally:
            ticker.cancel()

    lines = asyncio.run(run())
    assert lines[0].startswith("hflocal:   inspecting the GGUF file... (")
    assert "hflocal:   inspect: 100% (1/1)" in lines
    assert lines.index("hflocal:   inspect: 100% (1/1)") < next(
        i for i, line in enumerate(lines) if "building the tokenizer..." in line)
    assert lines[-1].startswith("hflocal:   writing the model files... (") and lines[-1].endswith(" s)")
