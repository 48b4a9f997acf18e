"""The settings page in a real browser (Debian's headless Chromium via Playwright) against a real
``hflocal serve`` and the local hub: the whole flow a user goes through, then the error states.

Screenshots of every step land in ``test-artifacts/`` (``settings-*.png``). Waits are Playwright's
bounded ``expect`` timeouts: they guard against hangs, they are not what is tested.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hubserver import HubServer
from tests.support.agentproc import AgentProcess, start_agent
from tests.web.conftest import BIG, BIG_SIZE, TINY, TINY_REPLY, variant_key

pytestmark = pytest.mark.browser

expect: Any = None


@pytest.fixture(autouse=True)
def _expect() -> None:
    global expect
    expect = pytest.importorskip("playwright.sync_api").expect


class Shots:
    """Numbered screenshots of one test, full page, into ``test-artifacts/``."""

    def __init__(self, page: Any, folder: Path, prefix: str) -> None:
        self.page = page
        self.folder = folder
        self.prefix = prefix
        self.n = 0
        for old in folder.glob(f"{prefix}-*.png"):
            old.unlink()

    def __call__(self, name: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.prefix}-{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth"))


def test_search_download_activate_chat_delete(
    agent: AgentProcess, settings_url: str, context: Any, tiny_on_hub: HubServer, artifacts_dir: Path
) -> None:
    key = variant_key(TINY, "q4")
    # Slow this one transfer down so that the page shows a download in flight.
    tiny_on_hub.control.add_fault(f"{TINY}/onnx/model_q4.onnx", rate_limit_bytes_per_s=40_000)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=agent.http_url)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    shot = Shots(page, artifacts_dir, "settings-flow")

    # Signing in: the token becomes an HttpOnly, SameSite=Strict cookie and leaves the address bar.
    page.goto(settings_url)
    expect(page).to_have_url(f"{agent.http_url}/")
    [cookie] = context.cookies()
    assert cookie["value"] == agent.info.token and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    expect(page.locator("#live")).to_have_attribute("data-state", "on")
    expect(page.locator("#agent-state")).to_contain_text("no model")
    expect(page.locator("#installed-empty")).to_be_visible()
    expect(page.locator("#hw-providers")).to_contain_text("CPUExecutionProvider")
    expect(page.locator("#hw-cache")).to_contain_text(str(agent.home))
    expect(page.locator("#api-base")).to_have_value(f"{agent.http_url}/v1")
    shot("opened")

    # Search with the keyboard, pick the model.
    page.locator("#search-q").focus()
    page.keyboard.type("tiny")
    page.keyboard.press("Enter")
    result = page.locator(f'button.result[data-model="{TINY}"]')
    expect(result).to_be_visible()
    shot("search")
    result.focus()
    page.keyboard.press("Enter")
    expect(result).to_have_attribute("aria-pressed", "true")
    options = page.locator("#quant-options label.option")
    expect(options).to_have_count(2)
    expect(page.locator("label[for=quant-q4]")).to_contain_text(re.compile(r"q4\s*\d+(\.\d)? KB"))
    expect(page.locator("label[for=quant-fp32]")).to_contain_text(re.compile(r"fp32\s*\d+(\.\d)? KB"))
    page.locator("#quant-q4").check()
    q4_size = page.locator("label[for=quant-q4] .size").inner_text()
    expect(page.locator("#device")).to_have_value("auto")
    expect(page.locator("#disk-note")).to_contain_text("free on the cache disk")
    shot("picked")

    # Download and watch it reach 100 % (bytes, speed and time left of a longer one: the cancel test).
    page.locator("#download-go").click()
    job = page.locator("li.job")
    expect(job).to_have_count(1)
    expect(job).to_have_attribute("data-state", "running")
    expect(job.locator(".job-detail")).to_contain_text(f" of {q4_size}")
    expect(job.get_by_role("button", name=re.compile("Cancel"))).to_be_visible()
    shot("downloading")
    expect(job).to_have_attribute("data-state", "finished", timeout=60_000)
    expect(job.locator(".pct")).to_have_text("100 %")
    assert job.locator("progress").evaluate("p => p.value") == 100
    installed = page.locator(f'li.model[data-key="{key}"]')
    expect(installed).to_be_visible()
    expect(installed).to_contain_text("installed")
    expect(page.locator("label[for=quant-q4] .badge")).to_have_text("installed")
    shot("downloaded")

    # Make it active: the header follows the model's load through the event stream.
    installed.get_by_role("button", name=re.compile("Make .* active")).click()
    expect(installed).to_have_attribute("data-state", "active", timeout=60_000)
    expect(page.locator("#agent-state")).to_contain_text("ready", timeout=60_000)
    expect(page.locator("#snippet")).to_contain_text(key)
    shot("active")

    # Chat from the page, and run the page's own snippet as a user would paste it.
    page.locator("#try-prompt").fill("Hi there")
    page.locator("#try-send").click()
    expect(page.locator("#try-answer")).to_have_text(TINY_REPLY, timeout=60_000)
    snippet = page.locator("#snippet").inner_text()
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == TINY_REPLY
    page.locator("#copy-base").click()
    assert page.evaluate("navigator.clipboard.readText()") == f"{agent.http_url}/v1"
    shot("chat")

    page.emulate_media(color_scheme="dark")
    shot("dark")
    page.emulate_media(color_scheme="light")

    # Narrow window: everything still readable, nothing scrolls sideways.
    page.set_viewport_size({"width": 380, "height": 800})
    expect(installed).to_be_visible()
    assert no_horizontal_scroll(page)
    shot("narrow")
    page.set_viewport_size({"width": 1280, "height": 900})

    # Delete it (after confirming), and the list says it is empty again.
    page.once("dialog", lambda dialog: dialog.accept())
    installed.get_by_role("button", name=re.compile("Delete")).click()
    expect(installed).to_have_count(0)
    expect(page.locator("#installed-empty")).to_be_visible()
    expect(page.locator("#agent-state")).to_contain_text("no model")
    shot("deleted")
    with httpx.Client(trust_env=False) as http:
        models = http.get(f"{agent.http_url}/api/installed", headers={"Authorization": f"Bearer {agent.info.token}"})
    assert models.json() == {"models": []}
    # Works offline: the page asked nothing of anyone but the agent (no CDN, fonts or analytics).
    assert requested and all(url.startswith(f"{agent.http_url}/") for url in requested), requested


def test_watch_a_download_cancel_it_and_resume_it(
    agent: AgentProcess, settings_url: str, context: Any, big_on_hub: HubServer, artifacts_dir: Path
) -> None:
    # Slow enough for the page to show a transfer in flight, for this first request only.
    big_on_hub.control.add_fault(f"{BIG}/onnx/model_q4.onnx_data", rate_limit_bytes_per_s=400_000)
    page = context.new_page()
    shot = Shots(page, artifacts_dir, "settings-cancel")
    page.goto(settings_url)
    page.locator("#search-q").fill("big")
    page.locator("#search-go").click()
    page.locator(f'button.result[data-model="{BIG}"]').click()
    expect(page.locator("label[for=quant-q4]")).to_contain_text("4.2 MB")
    page.locator("#download-go").click()
    job = page.locator("li.job")
    # Bytes so far, speed and time left, while it runs.
    expect(job.locator(".job-detail")).to_contain_text(re.compile(r"\d+(\.\d)? [KM]B of 4\.2 MB · \d+(\.\d)? [KM]B/s · about \d+ s left"))
    shot("in-flight")
    page.set_viewport_size({"width": 380, "height": 800})
    assert no_horizontal_scroll(page)
    shot("in-flight-narrow")
    page.set_viewport_size({"width": 1280, "height": 900})
    job.get_by_role("button", name=re.compile("Cancel")).focus()
    page.keyboard.press("Enter")
    expect(job).to_have_attribute("data-state", "cancelled")
    expect(job.locator(".job-detail")).to_contain_text("resumes")
    shot("cancelled")
    headers = {"Authorization": f"Bearer {agent.info.token}"}
    with httpx.Client(trust_env=False) as http:
        assert http.get(f"{agent.http_url}/api/downloads", headers=headers).json() == {"downloads": []}
    served = big_on_hub.control.bytes_served(f"{BIG}/onnx/model_q4.onnx_data")
    assert 0 < served < BIG_SIZE
    # Downloading again resumes where it stopped and completes.
    job.get_by_role("button", name="Dismiss").click()
    expect(page.locator("#downloads-empty")).to_be_visible()
    page.locator("#download-go").click()
    expect(page.locator("li.job")).to_have_attribute("data-state", "finished", timeout=60_000)
    expect(page.locator("li.job .pct")).to_have_text("100 %")
    expect(page.locator(f'li.model[data-key="{variant_key(BIG, "q4")}"]')).to_be_visible()
    assert big_on_hub.control.bytes_served(f"{BIG}/onnx/model_q4.onnx_data") < served + BIG_SIZE
    shot("resumed")


def test_error_states(
    agent: AgentProcess, agents: list[AgentProcess], settings_url: str, context: Any, tiny_on_hub: HubServer,
    artifacts_dir: Path,
) -> None:
    page = context.new_page()
    shot = Shots(page, artifacts_dir, "settings-errors")
    page.goto(settings_url)
    expect(page.locator("#live")).to_have_attribute("data-state", "on")

    # A search that matches nothing.
    page.locator("#search-q").fill("no-such-model-anywhere")
    page.locator("#search-go").click()
    expect(page.locator("#search-note")).to_contain_text("No ONNX chat models match")
    shot("no-results")

    # A repository without ONNX weights.
    page.locator("#search-q").fill("weights-only")
    page.locator("#search-go").click()
    page.locator('button.result[data-model="org/Tiny-Chat-weights-only"]').click()
    expect(page.locator("#pick-error")).to_contain_text("has no ONNX weights")
    expect(page.locator("#pick-form")).to_be_hidden()
    shot("no-onnx")

    # The Hub answering errors.
    tiny_on_hub.control.add_fault("/api/models*", fail_status=500, times=-1)
    page.locator("#search-q").fill("tiny")
    page.locator("#search-go").click()
    expect(page.locator("#search-error")).to_have_attribute("data-code", "hub_error", timeout=60_000)
    expect(page.locator("#search-error")).to_contain_text("answered with an error")
    shot("hub-error")
    tiny_on_hub.control.clear_faults()

    # A download that fails (the file arrives damaged): the job says so and offers Retry.
    page.locator("#search-go").click()
    page.locator(f'button.result[data-model="{TINY}"]').click()
    page.locator("#quant-q4").check()
    tiny_on_hub.control.add_fault(f"{TINY}/onnx/model_q4.onnx", corrupt=True, times=-1)
    page.locator("#download-go").click()
    job = page.locator("li.job")
    expect(job).to_have_attribute("data-state", "failed", timeout=60_000)
    expect(job.locator(".job-detail")).to_contain_text("damaged")
    expect(job.get_by_role("button", name="Retry")).to_be_visible()
    shot("download-failed")
    tiny_on_hub.control.clear_faults()
    job.get_by_role("button", name="Retry").click()
    expect(page.locator("li.job")).to_have_attribute("data-state", "finished", timeout=60_000)
    shot("retried")

    # No network: the Hub is gone; installed models and the rest of the page still work.
    tiny_on_hub.stop()
    page.locator("#search-q").fill("tiny")
    page.locator("#search-go").click()
    expect(page.locator("#search-error")).to_have_attribute("data-code", "network", timeout=60_000)
    expect(page.locator("#search-error")).to_contain_text("Can't reach the Hugging Face Hub")
    expect(page.locator(f'li.model[data-key="{variant_key(TINY, "q4")}"]')).to_be_visible()
    shot("no-network")
    page.set_viewport_size({"width": 380, "height": 800})
    assert no_horizontal_scroll(page)
    shot("no-network-narrow")

    # The agent goes away: the page says so instead of failing silently.
    page.set_viewport_size({"width": 1280, "height": 900})
    agent.stop()
    expect(page.locator("#banner")).to_contain_text("not answering", timeout=30_000)
    expect(page.locator("#live")).to_have_attribute("data-state", "off")
    shot("agent-stopped")

    # It comes back with a new token: this page's session is over, and the page says how to reopen it.
    agents.append(start_agent(agent.home, ports=agent.ports))
    expect(page.locator("#banner")).to_contain_text("session has ended", timeout=30_000)
    expect(page.locator("#banner")).to_contain_text("hflocal open")
    shot("session-ended")


def test_without_the_token_the_page_says_how_to_open_it(
    agent: AgentProcess, context: Any, artifacts_dir: Path
) -> None:
    page = context.new_page()
    shot = Shots(page, artifacts_dir, "settings-locked")
    response = page.goto(f"{agent.http_url}/")
    assert response is not None and response.status == 401
    expect(page.locator("h1")).to_contain_text("Open hflocal's settings from the tray")
    expect(page.locator("main")).to_contain_text("hflocal open")
    shot("no-token")
    response = page.goto(f"{agent.http_url}/?token=not-the-token")
    assert response is not None and response.status == 401
    expect(page.locator("#reason")).to_contain_text("not valid")
    assert context.cookies() == []
    page.set_viewport_size({"width": 380, "height": 700})
    assert no_horizontal_scroll(page)
    shot("wrong-token-narrow")


@pytest.fixture
def small_cache_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs) for the model cache: needs root to mount."""
    where = tmp_path / "small-disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_is_explained_before_anything_is_fetched(
    big_on_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path, small_cache_disk: Path,
    context: Any, artifacts_dir: Path,
) -> None:
    (hermetic_home / "settings.toml").write_text(f'cache_dir = "{small_cache_disk}"\n')
    agent = start_agent(hermetic_home)
    agents.append(agent)
    page = context.new_page()
    shot = Shots(page, artifacts_dir, "settings-disk-full")
    page.goto(f"{agent.http_url}/?token={agent.info.token}")
    expect(page.locator("#hw-cache")).to_contain_text(str(small_cache_disk))
    page.locator("#search-q").fill("big")
    page.locator("#search-go").click()
    page.locator(f'button.result[data-model="{BIG}"]').click()
    expect(page.locator("#disk-note")).to_contain_text("not enough space")
    page.locator("#download-go").click()
    expect(page.locator("#pick-error")).to_have_attribute("data-code", "disk_full")
    expect(page.locator("#pick-error")).to_contain_text("Not enough disk space")
    expect(page.locator("#downloads-empty")).to_be_visible()
    shot("refused")
    with httpx.Client(trust_env=False) as http:
        response = http.post(f"{agent.http_url}/api/downloads", json={"model_id": BIG, "quantization": "q4"},
                             headers={"Authorization": f"Bearer {agent.info.token}"})
    assert response.status_code == 507
    error = response.json()
    assert error["code"] == "disk_full" and error["details"]["needed"] > error["details"]["free"]
    # nothing of the download: only the config.json that the file listing reads to tell the graph
    control = big_on_hub.control
    assert control.bytes_served(BIG) == control.bytes_served(f"{BIG}/config.json")
    assert control.bytes_served(f"{BIG}/onnx/model_q4.onnx") == 0


def test_with_an_api_key_the_page_asks_for_it_and_the_snippet_reads_it_from_the_environment(
    tiny_on_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path, context: Any, artifacts_dir: Path
) -> None:
    agent = start_agent(hermetic_home, env={"HFLOCAL_API_KEY": "sk-local-test"})
    agents.append(agent)
    page = context.new_page()
    page.goto(f"{agent.http_url}/?token={agent.info.token}")
    expect(page.locator("#try-key")).to_be_visible()
    expect(page.locator("#snippet")).to_contain_text('api_key=os.environ["HFLOCAL_API_KEY"]')
    expect(page.locator("#snippet")).not_to_contain_text("sk-local-test")
    page.locator("#try-send").click()  # no key typed: the API's own answer is shown
    expect(page.locator("#try-answer")).to_contain_text("API key")
    Shots(page, artifacts_dir, "settings-api-key")("asks-for-key")
