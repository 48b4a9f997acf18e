"""Icons: right size, right badge, crisp edges, and a contact sheet kept as an artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipc.messages import DownloadProgress
from tests.ui.snapshots import KEY_A, KEY_B, info, status
from ui.icons import COLORS, PROGRESS_STEPS, IconState, contact_sheet, icon_state, logo, render
from ui.observations import WorkerDown, WorkerGaveUp, WorkerUp
from ui.state import Snapshot, reduce

SIZES = (16, 22, 24, 32, 48, 64)


def snap(*observations: object) -> Snapshot:
    s = Snapshot()
    for obs in observations:
        s, _ = reduce(s, obs)
    return s


def test_states_from_snapshots() -> None:
    assert icon_state(Snapshot()) == IconState("starting")
    assert icon_state(snap(WorkerUp(info()), status(active=KEY_A, model_state="ready"))) == IconState("ready")
    assert icon_state(snap(WorkerUp(info()), status(active=KEY_A, model_state="loading"))) == IconState("loading")
    half = DownloadProgress(job_id="d", key=KEY_B, done_bytes=50, total_bytes=100, rate_bps=1, eta_s=1, current_file="")
    assert icon_state(snap(WorkerUp(info()), half)) == IconState("downloading", PROGRESS_STEPS // 2)
    assert icon_state(snap(WorkerUp(info()), WorkerDown(reason="x", crashed=True))) == IconState("starting")
    assert icon_state(snap(WorkerGaveUp(reason="x", crashes=5, window_s=1))) == IconState("error")


@pytest.mark.parametrize("size", SIZES)
def test_every_badge_renders_at_every_size(size: int) -> None:
    for badge in COLORS:
        img = render(IconState(badge, 5 if badge == "downloading" else None), size)
        assert img.size == (size, size) and img.mode == "RGBA"
        # the badge's own colour is in the bottom-right quadrant
        corner = img.crop((size // 2, size // 2, size, size))
        colors = {c for _, c in corner.getcolors(size * size)}  # type: ignore[union-attr]
        assert COLORS[badge] in colors, (badge, size)


@pytest.mark.parametrize("size", (16, 32, 64))
def test_logo_is_crisp_on_its_own_grid(size: int) -> None:
    """Drawn per size, not downscaled: the glyph's stem is made of exact ink pixels, no blur."""
    img = logo(size)
    ink = (28, 32, 44, 255)
    row = [img.getpixel((x, size // 2)) for x in range(size)]
    assert row.count(ink) >= 2
    # left edge of the stem: amber, then ink, with no in-between shade
    first = row.index(ink)
    assert row[first - 1] == (255, 183, 0, 255)


def test_progress_changes_the_image() -> None:
    assert render(IconState("downloading", 2), 32).tobytes() != render(IconState("downloading", 10), 32).tobytes()


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError):
        render(IconState("ready"), 4)


def test_contact_sheet_artifact(artifacts_dir: Path) -> None:
    light = contact_sheet()
    dark = contact_sheet(background=(32, 32, 32))
    light.save(artifacts_dir / "tray-icons-light.png")
    dark.save(artifacts_dir / "tray-icons-dark.png")
    assert light.size == dark.size and light.width > sum(SIZES)
