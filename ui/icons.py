"""Tray icons: the logo from ``assets/`` with a state badge, drawn with Pillow at the size asked for.

The badge sits in the bottom-right corner, ringed in white so it reads on dark and light bars:
grey while starting or stopped, green when ready, blue while a model loads, a blue pie that fills
with download progress, red with a "!" on error. Badge edges are snapped to the pixel grid of the
target size (and corners supersampled), so icons stay crisp from 16 to 64 px. Pure: no pystray.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw

import assets
from ui.state import Snapshot, download_fraction

LOGO_SIZES = (16, 22, 24, 32, 48, 64, 256)
SUPERSAMPLE = 4
PROGRESS_STEPS = 16
"""Download progress is drawn in 1/16 steps: finer changes are invisible and would redraw the icon."""

COLORS = {
    "starting": (150, 150, 150, 255),
    "stopped": (150, 150, 150, 255),
    "ready": (34, 170, 80, 255),
    "loading": (40, 120, 230, 255),
    "downloading": (40, 120, 230, 255),
    "error": (220, 40, 40, 255),
}
WHITE = (255, 255, 255, 255)


@dataclass(frozen=True, slots=True)
class IconState:
    """What the icon shows; equal states draw identical images (the tray redraws only on change)."""

    badge: str
    progress: int | None = None
    """Download progress in ``PROGRESS_STEPS`` steps, for the ``downloading`` badge."""


def icon_state(s: Snapshot) -> IconState:
    """The badge for a snapshot: error first, then downloads, loading, starting, ready."""
    if s.runtime == "failed" or (s.runtime == "ready" and s.model_state == "failed" and not s.activating):
        return IconState("error")
    if s.runtime in ("starting", "restarting", "stopping") or (s.runtime == "ready" and not s.synced):
        return IconState("starting")
    if s.runtime == "stopped":
        return IconState("stopped")
    fraction = download_fraction(s)
    if fraction is not None:
        return IconState("downloading", int(fraction * PROGRESS_STEPS))
    if s.activating or s.model_state == "loading":
        return IconState("loading")
    return IconState("ready")


@lru_cache(maxsize=16)
def logo(size: int) -> Image.Image:
    """The logo at ``size`` px: the PNG in ``assets/`` for the usual sizes, else drawn on that size's
    own pixel grid by the same code that drew the PNGs (never a blurred rescale)."""
    if size in LOGO_SIZES:
        with Image.open(assets.path(f"logo-{size}.png")) as png:
            img = png.convert("RGBA")
        return img
    from assets.draw_logo import draw_logo

    return draw_logo(size)


def _badge(size: int, state: IconState) -> Image.Image:
    """The badge layer (size x size, transparent), drawn supersampled on the target grid."""
    diameter = max(7, round(size * 0.5))
    ring = max(1, round(size / 24))
    ss = SUPERSAMPLE
    layer = Image.new("RGBA", (size * ss, size * ss), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    x0 = (size - diameter) * ss
    y0 = (size - diameter) * ss
    x1 = size * ss - 1
    y1 = size * ss - 1
    d.ellipse((x0, y0, x1, y1), fill=WHITE)
    inner = (x0 + ring * ss, y0 + ring * ss, x1 - ring * ss, y1 - ring * ss)
    color = COLORS[state.badge]
    if state.badge == "downloading":
        d.ellipse(inner, fill=color)
        steps = state.progress or 0
        if steps > 0:
            pad = ring * ss
            pie = (inner[0] + pad, inner[1] + pad, inner[2] - pad, inner[3] - pad)
            d.pieslice(pie, -90, -90 + 360 * steps / PROGRESS_STEPS, fill=WHITE)
    else:
        d.ellipse(inner, fill=color)
    if state.badge == "error" and diameter >= 9:
        cx = (x0 + x1) // 2
        bar_w = max(1, diameter // 6) * ss
        top = inner[1] + (inner[3] - inner[1]) // 5
        bottom = inner[1] + (inner[3] - inner[1]) * 3 // 5
        d.rectangle((cx - bar_w // 2, top, cx + bar_w // 2, bottom), fill=WHITE)
        dot = inner[1] + (inner[3] - inner[1]) * 7 // 10
        d.rectangle((cx - bar_w // 2, dot, cx + bar_w // 2, dot + bar_w), fill=WHITE)
    return layer.resize((size, size), Image.Resampling.BOX)


@lru_cache(maxsize=64)
def render(state: IconState, size: int = 64) -> Image.Image:
    """The tray icon for ``state`` at ``size`` px (RGBA). Cached: do not modify the result."""
    if not 8 <= size <= 1024:
        raise ValueError(f"icon size {size} is out of range")
    img = logo(size).copy()
    img.alpha_composite(_badge(size, state))
    return img


def contact_sheet(
    sizes: tuple[int, ...] = (16, 22, 24, 32, 48, 64), background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """Every badge at every size on one image (for docs and test artifacts)."""
    states = [IconState("starting"), IconState("ready"), IconState("loading"), IconState("downloading", 6),
              IconState("downloading", 12), IconState("error")]
    pad = 6
    width = sum(sizes) + pad * (len(sizes) + 1)
    height = (max(sizes) + pad) * len(states) + pad
    sheet = Image.new("RGBA", (width, height), (*background, 255))
    y = pad
    for state in states:
        x = pad
        for size in sizes:
            icon = render(state, size)
            sheet.alpha_composite(icon, (x, y + (max(sizes) - size)))
            x += size + pad
        y += max(sizes) + pad
    return sheet


__all__ = ["IconState", "contact_sheet", "icon_state", "logo", "render"]
