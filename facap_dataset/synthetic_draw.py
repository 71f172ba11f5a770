"""Pillow drawings of the synthetic garments: flat product shots whose attributes are visible at 32-64 px.

Geometry is written in unit coordinates (x right, y down, garment centred at x = 0.5) and mapped to pixels
by a per-image pose (scale, shift, small rotation), so that no two images coincide even with equal
attributes. Categories differ in silhouette: a dress has a waist and a flared skirt, a shirt a straight
body with a button placket, a top/tee a short boxy body with a hem band, a jacket a wide straight body
open at the front, with lapels and two pockets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageChops, ImageDraw

from .synthetic_attributes import COLOURS, Attributes

Point = tuple[float, float]

_SHOULDER_Y, _ARMPIT_Y = 0.22, 0.34
_HEM_Y = {  # category -> garment length -> hem height
    "dress": {"short": 0.64, "medium": 0.77, "long": 0.92},
    "shirt": {"short": 0.55, "medium": 0.68, "long": 0.82},
    "toptee": {"short": 0.50, "medium": 0.62, "long": 0.76},
    "jacket": {"short": 0.54, "medium": 0.68, "long": 0.86},
}
_SLEEVES: dict[str, tuple[Point, ...]] = {  # right sleeve; the left one is its mirror image
    "sleeveless": (),
    "short": ((0.66, 0.22), (0.77, 0.30), (0.72, 0.38), (0.65, 0.34)),
    "long": ((0.66, 0.22), (0.76, 0.27), (0.83, 0.62), (0.76, 0.64), (0.65, 0.34)),
}
_NECK_CUTS: dict[str, tuple[Point, ...]] = {
    "round": tuple((0.5 + 0.075 * math.cos(t), 0.215 + 0.065 * math.sin(t)) for t in (i * math.pi / 8 for i in range(9))),
    "v": ((0.425, 0.215), (0.575, 0.215), (0.5, 0.34)),
    "square": ((0.435, 0.215), (0.565, 0.215), (0.565, 0.29), (0.435, 0.29)),
    "high": (),
}
_HIGH_COLLAR = ((0.445, 0.16), (0.555, 0.16), (0.56, 0.23), (0.44, 0.23))


@dataclass(frozen=True)
class Pose:
    """Nuisance variation of one image: everything that is not an attribute."""

    scale: float  # garment size relative to the canvas, ~0.8-1.0
    shift: Point  # in canvas fractions
    angle: float  # degrees
    background: tuple[int, int, int]
    shade: tuple[int, int, int]  # added to the colour's RGB
    pattern_phase: int  # offsets the pattern grid (0-3)


def draw_garment(category: str, attributes: Attributes, pose: Pose, size: int) -> Image.Image:
    """Render one garment as an RGB image of `size` x `size` pixels."""
    to_pixels = _pose_transform(pose, size)
    body = [to_pixels(p) for p in _body(category, attributes["length"])]
    sleeves = [[to_pixels(p) for p in polygon] for polygon in _mirrored(_SLEEVES[attributes["sleeve"]])]
    extra = [[to_pixels(p) for p in _HIGH_COLLAR]] if attributes["neckline"] == "high" else []
    neck = [to_pixels(p) for p in _NECK_CUTS[attributes["neckline"]]]

    mask = Image.new("L", (size, size), 0)
    draw_mask = ImageDraw.Draw(mask)
    for polygon in (body, *sleeves, *extra):
        draw_mask.polygon(polygon, fill=255)
    if neck:
        draw_mask.polygon(neck, fill=0)

    base = tuple(max(0, min(255, c + s)) for c, s in zip(COLOURS[attributes["colour"]], pose.shade))
    accent = _accent(base)
    fabric = Image.new("RGB", (size, size), base)
    if attributes["pattern"] != "solid":
        fabric.paste(accent, mask=_pattern_mask(attributes["pattern"], size, pose.pattern_phase))
    image = Image.new("RGB", (size, size), pose.background)
    image.paste(fabric, mask=mask)

    outline, width = _outline(base), max(1, round(size / 64))  # seams as thick at 224 px as at 64 px
    draw = ImageDraw.Draw(image)
    for polygon in (body, *sleeves, *extra):
        draw.line([*polygon, polygon[0]], fill=outline, width=width)
    if neck:
        draw.line(neck, fill=outline, width=width)
    _category_details(draw, category, attributes, to_pixels, outline, width)
    return image


def _body(category: str, length: str) -> tuple[Point, ...]:
    hem = _HEM_Y[category][length]
    if category == "dress":  # fitted bodice, waist, flared skirt (wider the longer it is)
        flare = 0.16 + 0.14 * (hem - 0.6) / 0.32
        right = ((0.67, _SHOULDER_Y), (0.65, _ARMPIT_Y), (0.62, 0.47), (0.5 + flare, hem))
    elif category == "shirt":  # straight body
        right = ((0.67, _SHOULDER_Y), (0.65, _ARMPIT_Y), (0.655, hem))
    elif category == "jacket":  # wide straight body, squared shoulders
        right = ((0.69, _SHOULDER_Y - 0.01), (0.68, _ARMPIT_Y), (0.685, hem))
    else:  # boxy tee, slightly wider at the hem
        right = ((0.67, _SHOULDER_Y), (0.66, _ARMPIT_Y), (0.68, hem))
    left = tuple((1.0 - x, y) for x, y in reversed(right))
    return right + left


def _mirrored(polygon: tuple[Point, ...]) -> list[tuple[Point, ...]]:
    if not polygon:
        return []
    return [polygon, tuple((1.0 - x, y) for x, y in polygon)]


def _category_details(draw: ImageDraw.ImageDraw, category, attributes, to_pixels, colour, width: int) -> None:
    hem = _HEM_Y[category][attributes["length"]]
    if category == "shirt":  # placket with buttons
        top = 0.34 if attributes["neckline"] == "v" else 0.29
        draw.line([to_pixels((0.5, top)), to_pixels((0.5, hem))], fill=colour, width=width)
        steps = 4
        for i in range(steps):
            x, y = to_pixels((0.525, top + (hem - top) * (i + 0.5) / steps))
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=colour)
    elif category == "jacket":  # open front, lapels, two pockets
        draw.line([to_pixels((0.5, 0.40)), to_pixels((0.5, hem))], fill=colour, width=width)
        for side in (-1, 1):
            draw.line([to_pixels((0.5 + side * 0.07, 0.22)), to_pixels((0.5, 0.40))], fill=colour, width=width)
            pocket_y = hem - 0.09
            draw.line([to_pixels((0.5 + side * 0.06, pocket_y)), to_pixels((0.5 + side * 0.14, pocket_y))],
                      fill=colour, width=width)
    elif category == "dress":  # waist seam
        draw.line([to_pixels((0.38, 0.47)), to_pixels((0.62, 0.47))], fill=colour, width=width)
    else:  # hem band
        draw.line([to_pixels((0.33, hem - 0.035)), to_pixels((0.67, hem - 0.035))], fill=colour, width=width)


def _pose_transform(pose: Pose, size: int):
    cos, sin = math.cos(math.radians(pose.angle)), math.sin(math.radians(pose.angle))
    cx, cy = 0.5 + pose.shift[0], 0.52 + pose.shift[1]

    def to_pixels(point: Point) -> Point:
        x, y = (point[0] - 0.5) * pose.scale, (point[1] - 0.55) * pose.scale
        return ((cx + cos * x - sin * y) * size, (cy + sin * x + cos * y) * size)

    return to_pixels


def _accent(base: tuple[int, ...]) -> tuple[int, int, int]:
    """Pattern colour: a darker shade on light fabric, a lighter one on dark fabric."""
    if _luminance(base) > 110:
        return tuple(int(c * 0.45) for c in base)
    return tuple(int(c + (255 - c) * 0.6) for c in base)


def _outline(base: tuple[int, ...]) -> tuple[int, int, int]:
    if _luminance(base) > 60:
        return tuple(int(c * 0.5) for c in base)
    return (90, 90, 90)


def _luminance(rgb: tuple[int, ...]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


@lru_cache(maxsize=64)
def _pattern_mask(pattern: str, size: int, phase: int) -> Image.Image:
    """Where the accent colour goes, for a whole canvas (cached: patterns repeat across images)."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    period = max(6.0, size / 8)  # below 6 px a pattern turns into a colour cast at 32 px
    offset = phase * period / 4
    steps = range(-1, int(size / period) + 2)
    if pattern == "striped":
        for i in steps:
            y = i * period + offset
            draw.rectangle((0, y, size, y + period / 2 - 1), fill=255)
    elif pattern == "checked":  # half-strength bands both ways; full strength where they cross
        columns = Image.new("L", (size, size), 0)
        draw_columns = ImageDraw.Draw(columns)
        for i in steps:
            a = i * period + offset
            draw.rectangle((0, a, size, a + period / 2 - 1), fill=140)
            draw_columns.rectangle((a, 0, a + period / 2 - 1, size), fill=140)
        mask = ImageChops.add(mask, columns)
    elif pattern in ("dotted", "floral"):
        radius = period / 6
        for i in steps:
            for j in steps:
                x = i * period + offset + (period / 2 if j % 2 else 0)
                y = j * period + offset
                if pattern == "dotted":
                    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
                else:  # a four-petal flower with an open centre
                    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                        px, py, petal = x + dx * radius * 1.3, y + dy * radius * 1.3, radius * 0.7
                        draw.ellipse((px - petal, py - petal, px + petal, py + petal), fill=255)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return mask
