"""The attribute space of the synthetic catalogue: one table shared by the drawing and the text writer."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .schema import FASHIONIQ_CATEGORIES

CATEGORIES = FASHIONIQ_CATEGORIES  # the synthetic set mirrors Fashion IQ's categories
# Garments FACap has beyond Fashion IQ's that carry the same attributes (the FACap stand-in draws them too).
EXTRA_CATEGORIES = ("jacket",)

# name -> RGB; distinct enough to be told apart at 32 px
COLOURS = {
    "red": (200, 30, 35),
    "orange": (240, 130, 20),
    "yellow": (245, 215, 40),
    "green": (40, 150, 60),
    "teal": (20, 140, 140),
    "blue": (40, 90, 220),
    "navy": (20, 30, 90),
    "purple": (120, 50, 160),
    "pink": (240, 130, 180),
    "brown": (120, 70, 30),
    "grey": (128, 128, 128),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}

# attribute -> its values; every garment has exactly one value per attribute
ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "pattern": ("solid", "striped", "dotted", "checked", "floral"),
    "sleeve": ("sleeveless", "short", "long"),
    "length": ("short", "medium", "long"),
    "neckline": ("round", "v", "square", "high"),
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)

Attributes = dict[str, str]


def changed_attributes(reference: Mapping[str, str], target: Mapping[str, str]) -> tuple[str, ...]:
    """Names of the attributes whose value differs, in the canonical attribute order."""
    return tuple(name for name in ATTRIBUTE_NAMES if reference[name] != target[name])


def to_json(attributes: Mapping[str, str]) -> str:
    """The canonical JSON form stored in the dataset (keys in attribute order)."""
    return json.dumps({name: attributes[name] for name in ATTRIBUTE_NAMES})


def from_json(text: str) -> Attributes:
    return json.loads(text)
