"""Draws the hflocal logo PNGs in this folder (run by hand after changing the design):

    .venv/bin/python -m assets.draw_logo

The logo is an amber rounded square with a dark "h". Each size is drawn on its own pixel grid
(edges snapped to whole pixels, corners supersampled), so 16 px is as crisp as 256 px instead of
being a blurred downscale. A thin dark rim keeps it visible on light menu bars; the amber keeps it
visible on dark ones.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZES = (16, 22, 24, 32, 48, 64, 256)
AMBER = (255, 183, 0, 255)
RIM = (92, 60, 0, 255)
INK = (28, 32, 44, 255)
SUPERSAMPLE = 4


def _px(fraction: float, size: int) -> int:
    return round(fraction * size)


def draw_logo(size: int) -> Image.Image:
    """The logo at ``size`` x ``size`` pixels, RGBA, transparent outside the rounded square."""
    ss = size * SUPERSAMPLE
    img = Image.new("RGBA", (ss, ss), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    unit = SUPERSAMPLE

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        # snap to the target grid, then scale to the supersampled canvas
        return (_px(x0, size) * unit, _px(y0, size) * unit, _px(x1, size) * unit - 1, _px(y1, size) * unit - 1)

    radius = max(2, _px(0.22, size)) * unit
    rim = max(1, _px(0.045, size)) * unit
    d.rounded_rectangle((0, 0, ss - 1, ss - 1), radius=radius, fill=RIM)
    d.rounded_rectangle((rim, rim, ss - 1 - rim, ss - 1 - rim), radius=max(unit, radius - rim), fill=AMBER)
    # the "h": stem, shoulder, leg
    stem_w = max(2, _px(0.14, size))
    left = _px(0.26, size)
    right = size - left
    top = _px(0.17, size)
    bottom = size - _px(0.17, size)
    shoulder = _px(0.44, size)
    d.rectangle(box(left / size, top / size, (left + stem_w) / size, bottom / size), fill=INK)
    d.rectangle(box((right - stem_w) / size, (shoulder + stem_w) / size, right / size, bottom / size), fill=INK)
    arch = box(left / size, shoulder / size, right / size, (shoulder + stem_w + stem_w // 2 + 1) / size)
    d.rounded_rectangle(arch, radius=stem_w * unit, fill=INK, corners=(False, True, False, False))
    return img.resize((size, size), Image.Resampling.BOX)


def main() -> None:
    here = Path(__file__).resolve().parent
    for size in SIZES:
        draw_logo(size).save(here / f"logo-{size}.png", optimize=True)
        print(here / f"logo-{size}.png")


if __name__ == "__main__":
    main()
