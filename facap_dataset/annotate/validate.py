"""Output checks: what a model answer must satisfy before it is written as data.

A failed check is retried by the runner and, when every attempt fails, reported as a rejection with the
reason returned here. Nothing here repairs an answer beyond trimming quotes and whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Words that unambiguously name a garment category. Generic words ("top" as in "top part", "outfit") are
# deliberately absent so that a modification text may use them without being rejected.
CATEGORY_WORDS: dict[str, frozenset[str]] = {
    "dress": frozenset({"dress", "dresses", "gown", "gowns"}),
    "shirt": frozenset({"shirt", "shirts", "blouse", "blouses"}),
    "toptee": frozenset({"tee", "tees", "t-shirt", "t-shirts", "tshirt", "tshirts", "camisole", "camisoles"}),
    "jacket": frozenset({"jacket", "jackets", "coat", "coats", "blazer", "blazers"}),
    "pants": frozenset({"pants", "trousers", "jeans", "leggings"}),
    "skirt": frozenset({"skirt", "skirts"}),
}
# FACap's categories that share Fashion IQ's garments.
CATEGORY_WORDS["top"] = CATEGORY_WORDS["toptee"] | CATEGORY_WORDS["shirt"]
CATEGORY_WORDS["outfit"] = frozenset()

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
_SENTENCE_BREAK = re.compile(r"[.!?]+[\"')\]]*\s+(?=\S)")
_WRAPPING_QUOTES = "\"'`“”‘’"
# Chat models sometimes decline or talk about themselves instead of answering; such text is not data.
_REFUSAL = re.compile(r"^(i'?m sorry|sorry,|i can(no|')t|i am unable|i'm unable|as an ai)", re.IGNORECASE)


@dataclass(frozen=True)
class OutputRules:
    """Length bounds in words; `one_sentence` and `exclusive_category` are stage-2 rules."""

    min_words: int
    max_words: int
    one_sentence: bool
    exclusive_category: bool

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"word bounds must satisfy 1 <= min_words <= max_words, got {self.min_words}..{self.max_words}")


CAPTION_RULES = OutputRules(min_words=5, max_words=250, one_sentence=False, exclusive_category=False)
MODIFICATION_RULES = OutputRules(min_words=3, max_words=60, one_sentence=True, exclusive_category=True)


def clean_output(text: str) -> str:
    """Collapse whitespace and drop quotes wrapped around the whole answer."""
    text = " ".join(text.split())
    while len(text) >= 2 and text[0] in _WRAPPING_QUOTES and text[-1] in _WRAPPING_QUOTES:
        text = text[1:-1].strip()
    return text


def other_categories_named(text: str, category: str) -> list[str]:
    """Category words in `text` that belong to a category other than `category`."""
    allowed = CATEGORY_WORDS.get(category, frozenset({category.lower(), f"{category.lower()}s"}))
    forbidden = set().union(*CATEGORY_WORDS.values()) - allowed
    return sorted({word for word in _WORD.findall(text.lower()) if word in forbidden})


def check_output(text: str, rules: OutputRules, category: str) -> str | None:
    """None when `text` (already cleaned) is acceptable, else a short reason."""
    if not text:
        return "empty output"
    if _REFUSAL.match(text):
        return "refusal"
    words = len(text.split())
    if words < rules.min_words:
        return f"too short ({words} words < {rules.min_words})"
    if words > rules.max_words:
        return f"too long ({words} words > {rules.max_words})"
    if rules.one_sentence and _SENTENCE_BREAK.search(text):
        return "more than one sentence"
    if rules.exclusive_category:
        named = other_categories_named(text, category)
        if named:
            return f"mentions another category ({', '.join(named)})"
    return None
