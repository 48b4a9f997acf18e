"""Hostile models: what the files of a downloaded repo can do to the agent, and odd but honest input.

Every repo here is the tiny model with one file changed, served by the tests' hub and installed
with ``hflocal pull`` into a real ``hflocal serve``: a chat template that loops for hours, recurses
or builds a 3 GB string (in a branch that never runs, which Jinja used to fold at compile time),
a ``config.json`` with ``max_position_embeddings`` = 3e8, a remembered model that stopped loading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from agent.engine.model_files import MAX_CONTEXT
from agent.log_records import MAX_RECORD_CHARS
from tests.fakes.tiny_model import CHAT_TEMPLATE, TinyModel
from tests.hubserver import HubRepos, HubServer
from tests.reliability.support import MIB, REPO_ROOT, case, rss
from tests.support.agentproc import AgentProcess, cli, run_serve, start_agent
from tests.support.worker import TINY, TINY_REPLY, publish, repo_files, variant_key, wait_until

EVIL_TEMPLATE = (
    "{% macro deeper(n) %}{{ deeper(n + 1) }}{% endmacro %}"
    "{% if messages[0]['content'] == 'loop' %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% elif messages[0]['content'] == 'slow' %}"
    "{% for i in range(100000) %}{% set n = ('ab' * 1000000) | length %}{% endfor %}"
    "{% elif messages[0]['content'] == 'recurse' %}{{ deeper(0) }}"
    "{% elif messages[0]['content'] == 'overflow' %}{{ 10.0 ** 400 }}"
    "{% elif messages[0]['content'] == 'grow' %}"
    "{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}"
    "{% endif %}"
    "{% if false %}{% set never = 'a' * 3000000000 %}{% endif %}"
) + CHAT_TEMPLATE
"""Harmless for a plain chat; each trigger word sets off one attack."""


def _changed(tiny: TinyModel, name: str, change: dict[str, Any]) -> dict[str, bytes | Path]:
    """The tiny repo's files with the JSON object in ``name`` updated by ``change``."""
    files: dict[str, bytes | Path] = dict(repo_files(tiny.path))
    data = json.loads((tiny.path / name).read_text())
    data.update(change)
    files[name] = json.dumps(data, indent=2).encode()
    return files


def _install(agent: AgentProcess, hub_repos: HubRepos, model_id: str, files: dict[str, bytes | Path]) -> str:
    publish(hub_repos, model_id, files)
    for args in (("pull", model_id, "--quant", "q4"), ("use", model_id)):
        done = cli(*args, home=agent.home)
        assert done.returncode == 0, done.stderr
    return variant_key(model_id, "q4")


def _status(home: Path) -> dict[str, Any] | None:
    """``hflocal status --json``, or ``None`` while the agent cannot answer yet."""
    done = cli("status", "--json", home=home)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else None


def _chat(http: httpx.Client, content: str, **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}],
                                                   "max_tokens": 16, **extra})


def _one_line_error(answer: httpx.Response, status: int, code: str | None = None) -> str:
    assert answer.status_code == status, answer.text[:500]
    error = answer.json()["error"]
    assert code in (None, error["code"]) and "\n" not in error["message"] and len(error["message"]) < 1000, error
    return str(error["message"])


@case(area="hostile models", case="a chat template that loops, recurses, overflows or builds 3 GB",
      did="a hub repo whose template runs 10^10 loop iterations, 100 000 iterations of 2 MB strings, unbounded macro recursion, 10.0 ** 400 or doubles a string 60 times on trigger words, and holds 'a' * 3000000000 in a branch that never runs; pull, use, chat each trigger, /health meanwhile, then a plain chat",
      outcome="the load allocates nothing for the constant (RSS bounded); each trigger a one-line 400 invalid_template naming the template ('exceeded its render budget', RecursionError, OverflowError); /health answers while a render runs; the next chat gets its reply (the turn was freed)")
def test_hostile_chat_templates(agent: AgentProcess, hub_repos: HubRepos, tiny_model: TinyModel) -> None:
    before = rss(agent.proc.pid)
    _install(agent, hub_repos, "evil-org/Template-Bomb", _changed(tiny_model, "tokenizer_config.json",
                                                                  {"chat_template": EVIL_TEMPLATE}))
    assert rss(agent.proc.pid) < before + 512 * MIB, "the template's constant was built at load"
    with httpx.Client(base_url=agent.http_url, timeout=120) as http:
        answers: dict[str, httpx.Response] = {}
        # 'slow' spends its whole time budget (100 000 iterations of a 2 MB string, cut at 5 s).
        looping = threading.Thread(target=lambda: answers.setdefault("slow", _chat(http, "slow")))
        looping.start()
        healthy = []
        while looping.is_alive() and len(healthy) < 2000:  # bounded: the render stops within its budget
            health = http.get("/health")
            healthy.append((health.status_code, looping.is_alive()))
        looping.join(120)
        # One client, one request at a time: a loop blocked by the render would answer the one /health
        # queued behind it, and perhaps one more before the chat's answer is read; not five.
        during = sum(1 for status, rendering in healthy if status == 200 and rendering)
        assert during >= 5, f"{during} /health answers while the template was rendering"
        said = _one_line_error(answers["slow"], 400, "invalid_template")
        assert "chat template 'default' exceeded its render budget" in said, said
        for trigger, words in (("loop", "exceeded its render budget"), ("recurse", "RecursionError"),
                               ("overflow", "OverflowError"),
                               ("grow", "exceeded its render budget")):
            said = _one_line_error(_chat(http, trigger), 400, "invalid_template")
            assert words in said and "'default'" in said, said
        ok = _chat(http, "Hi")
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == TINY_REPLY, ok.text
    assert rss(agent.proc.pid) < before + 512 * MIB
    assert agent.proc.poll() is None


@case(area="hostile models", case="config.json with max_position_embeddings = 3e8",
      did="a hub repo (the 0.5 MB tiny model) whose config.json states 300 000 000 positions; pull, use, chat; then implausible num_hidden_layers (10^9)",
      outcome="the model loads with its context cut to what the machine holds (<= 1 Mi positions), RSS grows by less than 512 MiB (was 4.85 GB), it answers; the implausible size is a failed load naming the key, the previous model stays active")
def test_a_config_that_states_absurd_sizes(agent: AgentProcess, hub_repos: HubRepos, tiny_model: TinyModel) -> None:
    before = rss(agent.proc.pid)
    key = _install(agent, hub_repos, "evil-org/Long-Context",
                   _changed(tiny_model, "config.json", {"max_position_embeddings": 300_000_000}))
    assert rss(agent.proc.pid) < before + 512 * MIB, "arrays were sized by max_position_embeddings"
    with httpx.Client(base_url=agent.http_url, timeout=60) as http:
        listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        assert 0 < listed[key]["context_length"] <= MAX_CONTEXT
        ok = _chat(http, "Hi")
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == TINY_REPLY, ok.text
    publish(hub_repos, "evil-org/Many-Layers", _changed(tiny_model, "config.json", {"num_hidden_layers": 10**9}))
    assert cli("pull", "evil-org/Many-Layers", "--quant", "q4", home=agent.home).returncode == 0
    refused = cli("use", "evil-org/Many-Layers", home=agent.home)
    assert refused.returncode != 0 and "num_hidden_layers = 1000000000 is not a plausible value" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    status = json.loads(cli("status", "--json", home=agent.home).stdout)
    assert status["active"] == key, status


@case(area="hostile models", case="a remembered active model that no longer loads",
      did="make the tiny model active, stop the agent, change num_hidden_layers to 0 in its cached config.json (same size), start the agent twice",
      outcome="the first start tries once, says why in status warnings and forgets it as active; the second start does not try again; the files stay as they are")
def test_a_remembered_model_that_fails_to_load_is_not_retried_at_every_start(
    agent: AgentProcess, hub_repos: HubRepos, tiny_model: TinyModel, agents: list[AgentProcess]
) -> None:
    key = _install(agent, hub_repos, "evil-org/Breaks-Later", _changed(tiny_model, "config.json", {}))
    assert agent.stop() == 0
    config = next((agent.home / "cache").glob("models--evil-org--Breaks-Later/snapshots/*/config.json"))
    text = config.read_text()
    assert '"num_hidden_layers": 2' in text
    config.write_text(text.replace('"num_hidden_layers": 2', '"num_hidden_layers": 0'))
    first = start_agent(agent.home)
    agents.append(first)

    def warned() -> str | None:
        status = _status(first.home) or {"warnings": []}
        return next((w for w in status["warnings"] if key in w and "failed to load" in w), None)

    said = wait_until(warned, 60, "the failed load's warning")
    assert "num_hidden_layers = 0" in said and "\n" not in said
    assert json.loads((agent.home / "manifest.json").read_text())["active"] is None
    assert first.stop() == 0
    second = start_agent(agent.home)
    agents.append(second)
    status = wait_until(lambda: _status(second.home), 30, "the second agent's status")
    assert status["active"] is None and status["pid"] == second.proc.pid, status
    entry = next(m for m in json.loads(cli("ls", "--json", home=agent.home).stdout)["models"] if m["key"] == key)
    assert entry["status"] == "ready", entry  # the files were not the agent's to judge broken
    assert second.stop() == 0
    assert "could not load" not in second.output() and "num_hidden_layers = 0" not in second.output()


@case(area="bad input", case="seed -1, the smallest and largest int64 and beyond",
      did="chat completions with seed -1 (twice, temperature 1), -2^63, 2^63-1, 2^63 and -2^63-1",
      outcome="int64 seeds answer (-1 the same text twice: it is a seed, not 'random'); beyond int64 a one-line 400 naming seed")
def test_odd_seeds(agent: AgentProcess, hub_repos: HubRepos, tiny_model: TinyModel) -> None:
    _install(agent, hub_repos, "evil-org/Seeds", repo_files(tiny_model.path))  # type: ignore[arg-type]
    with httpx.Client(base_url=agent.http_url, timeout=60) as http:
        texts = []
        for seed in (-1, -1, -(1 << 63), (1 << 63) - 1):
            answer = _chat(http, "Hi", seed=seed, temperature=1.0)
            assert answer.status_code == 200, (seed, answer.text)
            texts.append(answer.json()["choices"][0]["message"]["content"])
        assert texts[0] == texts[1]
        for seed in (1 << 63, -(1 << 63) - 1):
            said = _one_line_error(_chat(http, "Hi", seed=seed), 400)
            assert "seed" in said, said


@case(area="bad input", case="a manifest.json that is a folder; cache_dir a file, under /proc, or set and removed",
      did="start with manifest.json a folder; with cache_dir = a file, /proc/self/x, /dev/shm/x, a path under a file; pull the tiny model, set cache_dir to an empty folder and start, remove it and start",
      outcome="the folder is kept aside and the store rebuilt (a warning); each bad cache_dir a one-line refusal naming settings.toml and cache_dir; the model is 'path outside the store' while another cache is set and ready (and answers) again once it is removed")
def test_odd_store_and_cache_dir(tiny_hub: HubServer, hermetic_home: Path, tmp_path: Path, agents: list[AgentProcess]) -> None:
    (hermetic_home / "manifest.json").mkdir()
    (hermetic_home / "manifest.json" / "inside.txt").write_text("kept")
    started = start_agent(hermetic_home)
    agents.append(started)
    status = json.loads(cli("status", "--json", home=hermetic_home).stdout)
    assert any("was a folder, not a file" in w for w in status["warnings"]), status
    kept = [p for p in hermetic_home.glob("manifest.corrupt-*.json") if (p / "inside.txt").read_text() == "kept"]
    assert kept and (hermetic_home / "manifest.json").is_file()
    for args in (("pull", TINY, "--quant", "q4"), ("use", TINY)):
        assert cli(*args, home=hermetic_home).returncode == 0
    assert started.stop() == 0

    settings = hermetic_home / "settings.toml"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for value in (a_file, "/proc/self/x", "/dev/shm/hflocal-cache", a_file / "under"):
        settings.write_text(f'cache_dir = "{value}"\n')
        refused = run_serve(hermetic_home)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        line = refused.stderr.strip()
        assert "\n" not in line and "settings.toml" in line and "cache_dir" in line and "Traceback" not in line, line

    key = variant_key(TINY, "q4")
    other = tmp_path / "other-cache"
    settings.write_text(f'cache_dir = "{other}"\n')
    elsewhere = start_agent(hermetic_home)
    agents.append(elsewhere)
    entry = next(m for m in json.loads(cli("ls", "--json", home=hermetic_home).stdout)["models"] if m["key"] == key)
    assert entry["status"] == "error" and "outside the store" in (entry["error"] or ""), entry
    assert elsewhere.stop() == 0
    settings.unlink()
    back = start_agent(hermetic_home)
    agents.append(back)
    entry = next(m for m in json.loads(cli("ls", "--json", home=hermetic_home).stdout)["models"] if m["key"] == key)
    assert entry["status"] == "ready" and not entry["error"], entry
    assert cli("use", TINY, home=hermetic_home).returncode == 0
    with httpx.Client(base_url=back.http_url, timeout=60) as http:
        ok = _chat(http, "Hi")
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == TINY_REPLY, ok.text


@case(area="bad input", case="hflocal import of /proc/self/mem, /proc, /dev/zero, a fifo",
      did="hflocal import of each against a live agent",
      outcome="exit 1 with one line saying what import accepts; no traceback in the agent's output; the agent keeps serving")
def test_import_of_system_paths(agent: AgentProcess, tmp_path: Path) -> None:
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    for path in ("/proc/self/mem", "/proc", "/dev/zero", str(fifo)):
        done = cli("import", path, home=agent.home, timeout=60)
        assert done.returncode == 1, (path, done.stdout, done.stderr)
        line = done.stderr.strip()
        assert "\n" not in line and "import accepts" in line and "internal error" not in line, (path, line)
    assert "Traceback" not in agent.output()
    assert json.loads(cli("status", "--json", home=agent.home).stdout)["pid"] == agent.proc.pid


LOG_FLOOD = """
import logging, sys, threading
from pathlib import Path
from agent.paths import Paths
from agent.worker import _setup_logging
paths = Paths.for_home(Path(sys.argv[1]))
paths.ensure()
_setup_logging(paths)
log = logging.getLogger("flood")
log.warning("big %s", "x" * 50_000_000)
try:
    raise ValueError("y" * 20_000_000)
except ValueError:
    log.exception("a template's error")
for _ in range(400):
    log.warning("z" * 1_000_000)
thread = threading.Thread(target=lambda: (_ for _ in ()).throw(RuntimeError("w" * 10_000_000)))
thread.start()
thread.join()
"""


@case(area="hostile models", case="log records quoting huge values",
      did="the worker's own logging setup, in a process: a 50 MB message, an exception whose text is 20 MB, 400 records of 1 MB, an uncaught 10 MB exception in a thread",
      outcome="each record in agent.log and on stderr cut to 64 KiB with '... [N more characters]'; all agent.log files together under 21 MB (5 MB x 4 rotations); stderr bounded likewise")
def test_log_records_and_log_files_are_bounded(hermetic_home: Path) -> None:
    done = subprocess.run([sys.executable, "-c", LOG_FLOOD, str(hermetic_home)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = sorted((hermetic_home / "logs").glob("agent.log*"))
    assert 1 < len(logs) <= 4, logs
    assert sum(p.stat().st_size for p in logs) < 21 * MIB
    assert len(done.stderr) < 403 * (MAX_RECORD_CHARS + 200), len(done.stderr)
    records = done.stderr.split("\n20")  # records begin with the year of their timestamp
    assert max(len(r) for r in records) < MAX_RECORD_CHARS + 200
    assert "more characters]" in done.stderr and "uncaught exception in thread" in done.stderr
