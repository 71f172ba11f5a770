"""The caption-join rule: the single source of truth for turning a triplet's captions into query text.

Fashion IQ triplets carry two relative captions; CLIP4Cir and SPRC evaluate with
`f"{c0.strip('.?, ').capitalize()} and {c1.strip('.?, ')}"` (the Fashion IQ convention). FACap-style triplets carry one
detailed sentence, which every rule returns stripped of surrounding whitespace.
"""

from __future__ import annotations

from typing import Sequence

CAPTION_JOIN_RULES = ("fashioniq", "first", "second", "both-orders")
_STRIP = ".?, "


def join_captions(captions: Sequence[str], rule: str = "fashioniq") -> str | list[str]:
    """Join a triplet's captions into query text.

    Returns a string, or for `both-orders` a list of the two orderings (training augmentation; at evaluation
    the scores of the two orderings are averaged, so a triplet stays one query).
    """
    if rule not in CAPTION_JOIN_RULES:
        raise ValueError(f"unknown caption join rule {rule!r}; expected one of {', '.join(CAPTION_JOIN_RULES)}")
    if len(captions) == 0:
        raise ValueError("a triplet has no captions")
    if len(captions) == 1:
        text = captions[0].strip()
        return [text, text] if rule == "both-orders" else text
    first, second = captions[0], captions[1]
    if rule == "first":
        return first.strip()
    if rule == "second":
        return second.strip()
    if rule == "both-orders":
        return [_fashioniq_join(first, second), _fashioniq_join(second, first)]
    return _fashioniq_join(first, second)


def _fashioniq_join(first: str, second: str) -> str:
    return f"{first.strip(_STRIP).capitalize()} and {second.strip(_STRIP)}"
