"""Modification texts of the synthetic catalogue, written from the attribute difference of a triplet.

Two styles, chosen per triplet:
- "fashioniq": two short relative captions, as two Fashion IQ annotators would write ("is red",
  "has long sleeves and is striped");
- "facap": one detailed sentence ("The dress should be red and striped with long sleeves.").
Templates and synonyms vary the surface form; `parse_text` is the exact inverse used by tests and by the
text oracle of `inspect`, so "the text names these attribute values" is checked, not assumed.
`SYNTHETIC_VOCABULARY` lists every token the writer can emit (a tiny word-level tokenizer covers it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from .synthetic_attributes import ATTRIBUTES, COLOURS, Attributes, changed_attributes

NOUNS = {"dress": ("dress", "gown"), "shirt": ("shirt", "blouse"), "toptee": ("top", "tee")}

# colour name -> words for it; "dark blue" stays navy because the parser matches longest phrases first
_COLOUR_WORDS = {name: (name,) for name in COLOURS} | {
    "red": ("red", "scarlet"),
    "navy": ("navy", "dark blue"),
    "purple": ("purple", "violet"),
    "grey": ("grey", "gray"),
}
_GARMENT_LENGTH = {
    "short": ("short", "mini"),
    "medium": ("knee length", "midi"),
    "long": ("long", "maxi", "floor length"),
}
_TOP_LENGTH = {
    "short": ("cropped", "short"),
    "medium": ("hip length", "regular length"),
    "long": ("long", "tunic length"),
}

# attribute -> value -> adjectives ("the dress is ___"); per category where garments differ
_ADJECTIVES: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": _COLOUR_WORDS,
    "pattern": {
        "solid": ("plain", "solid"),
        "striped": ("striped",),
        "dotted": ("dotted", "polka dot"),
        "checked": ("checked", "plaid", "checkered"),
        "floral": ("floral", "flowery"),
    },
    "sleeve": {"sleeveless": ("sleeveless",), "short": ("short sleeved",), "long": ("long sleeved",)},
    "neckline": {"round": (), "v": (), "square": (), "high": ()},
}
# attribute -> value -> noun phrases ("the dress has ___" / "with ___")
_WITH_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {name: tuple(f"a {word} colour" for word in words) for name, words in _COLOUR_WORDS.items()},
    "pattern": {
        "solid": ("no pattern",),
        "striped": ("stripes", "a striped pattern"),
        "dotted": ("dots", "polka dots"),
        "checked": ("checks", "a checked pattern"),
        "floral": ("flowers", "a floral print"),
    },
    "sleeve": {"sleeveless": ("no sleeves",), "short": ("short sleeves",), "long": ("long sleeves", "full sleeves")},
    "length": {"short": ("a short hemline",), "medium": ("a knee length hem",), "long": ("a long hemline",)},
    "neckline": {
        "round": ("a round neck", "a round neckline", "a crew neck"),
        "v": ("a v neck", "a v neckline"),
        "square": ("a square neck", "a square neckline"),
        "high": ("a high neck", "a turtleneck", "a high collar"),
    },
}

_FRAMES_IS = (
    "the {noun} is {desc}",
    "this {noun} should be {desc}",
    "i would like the {noun} to be {desc}",
    "make the {noun} {desc}",
    "a {noun} that is {desc}",
    "same {noun} but {desc}",
)
_FRAMES_HAS = (
    "the {noun} has {desc}",
    "this {noun} should have {desc}",
    "a {noun} with {desc}",
    "same {noun} but with {desc}",
    "give the {noun} {desc}",
)
_INSTEAD = "instead of"
STYLES = ("fashioniq", "facap")


def adjectives(attribute: str, value: str, category: str) -> tuple[str, ...]:
    if attribute == "length":
        return (_GARMENT_LENGTH if category == "dress" else _TOP_LENGTH)[value]
    return _ADJECTIVES[attribute][value]


def short_phrases(attribute: str, value: str, category: str, reference_value: str) -> list[str]:
    """Fashion IQ-style fragments naming `value` ("is red", "has stripes", "is red instead of blue")."""
    phrases = [f"is {adj}" for adj in adjectives(attribute, value, category)]
    phrases += [f"has {np_}" for np_ in _WITH_PHRASES[attribute][value]]
    if attribute == "colour":
        phrases += [f"is in {value}", f"is {value} {_INSTEAD} {_COLOUR_WORDS[reference_value][0]}"]
    return phrases


def write_text(
    reference: Attributes, target: Attributes, category: str, style: str, rng: np.random.Generator
) -> list[str]:
    """The captions of one triplet: two for "fashioniq", one sentence for "facap"."""
    changes = list(changed_attributes(reference, target))
    if not changes:
        raise ValueError("reference and target have the same attributes: nothing to describe")
    rng.shuffle(changes)
    if style == "fashioniq":
        return _fashioniq_captions(changes, reference, target, category, rng)
    if style == "facap":
        return [_facap_sentence(changes, target, category, rng)]
    raise ValueError(f"unknown caption style {style!r}; expected one of {STYLES}")


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _fashioniq_captions(changes, reference, target, category, rng) -> list[str]:
    def phrase(attribute: str) -> str:
        return _pick(short_phrases(attribute, target[attribute], category, reference[attribute]), rng)

    if len(changes) == 1:  # two annotators describing the same change in their own words
        (attribute,) = changes
        options = short_phrases(attribute, target[attribute], category, reference[attribute])
        captions = [options[int(i)] for i in rng.choice(len(options), size=2, replace=False)]
    else:
        cut = int(rng.integers(1, len(changes)))
        captions = [" and ".join(phrase(a) for a in changes[:cut]), " and ".join(phrase(a) for a in changes[cut:])]
    return captions


def _facap_sentence(changes, target, category, rng) -> str:
    described_as_adjective = [
        a for a in changes if adjectives(a, target[a], category) and rng.random() < 0.6
    ]
    adjs = [_pick(adjectives(a, target[a], category), rng) for a in described_as_adjective]
    withs = [_pick(_WITH_PHRASES[a][target[a]], rng) for a in changes if a not in described_as_adjective]
    noun = _pick(NOUNS[category], rng)
    if adjs:
        desc = _enumerate(adjs) + (f" with {_enumerate(withs)}" if withs else "")
        sentence = _pick(_FRAMES_IS, rng).format(noun=noun, desc=desc)
    else:
        sentence = _pick(_FRAMES_HAS, rng).format(noun=noun, desc=_enumerate(withs))
    return sentence[0].upper() + sentence[1:] + "."


def _enumerate(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ------------------------------------------------------------------------------------------ parsing

def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[.,]", text.lower())


def _lexicon() -> dict[tuple[str, ...], tuple[str, str]]:
    """Token sequence -> (attribute, value) for every surface form the writer uses."""
    lexicon: dict[tuple[str, ...], tuple[str, str]] = {}
    for attribute, values in ATTRIBUTES.items():
        for value in values:
            forms = [*_WITH_PHRASES[attribute][value]]
            for category in NOUNS:
                forms += adjectives(attribute, value, category)
            for form in forms:
                words = tuple(w for w in _tokens(form) if w != "a")
                if lexicon.setdefault(words, (attribute, value)) != (attribute, value):
                    raise AssertionError(f"ambiguous surface form {form!r}")
    return lexicon


_LEXICON = _lexicon()
_LONGEST = max(len(k) for k in _LEXICON)


def parse_text(captions: Sequence[str]) -> dict[str, str]:
    """The attribute values a text names for the target (values after "instead of" are the reference's)."""
    named: dict[str, str] = {}
    words = [w for caption in captions for w in _tokens(caption) if w not in {".", ","}]
    i, skip_next = 0, False
    while i < len(words):
        if tuple(words[i : i + 2]) == tuple(_INSTEAD.split()):
            i, skip_next = i + 2, True
            continue
        for n in range(min(_LONGEST, len(words) - i), 0, -1):
            match = _LEXICON.get(tuple(words[i : i + n]))
            if match:
                if not skip_next:
                    named[match[0]] = match[1]
                skip_next = False
                i += n
                break
        else:
            i += 1
    return named


def _vocabulary() -> tuple[str, ...]:
    texts = [*_FRAMES_IS, *_FRAMES_HAS, _INSTEAD, "is has in and with", ". ,"]
    texts += [word for nouns in NOUNS.values() for word in nouns]
    texts += [" ".join(words) for words in _LEXICON]
    texts += [f for forms in _WITH_PHRASES.values() for phrases in forms.values() for f in phrases]
    return tuple(sorted({t for text in texts for t in _tokens(text.replace("{noun}", "").replace("{desc}", ""))}))


SYNTHETIC_VOCABULARY = _vocabulary()
"""Every token (lowercase words, "." and ",") that synthetic captions contain, sorted."""


def describe(attributes: Mapping[str, str], category: str) -> str:
    """A compact label for contact sheets: "red striped long sleeved long round"."""
    parts = [_COLOUR_WORDS[attributes["colour"]][0], attributes["pattern"], f"{attributes['sleeve']} sleeve",
             f"{attributes['length']} length", f"{attributes['neckline']} neck"]
    return f"{category}: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------ colloquial

COLLOQUIAL = "colloquial"
PARTIAL_SHARE = 0.4  # of triplets with two or more changes: one change goes unmentioned
REDUNDANT_SHARE = 0.3  # the second caption repeats a change the first one names, in other words
VAGUE_SHARE = 0.2  # a caption gains a remark that names no attribute
_REDRAWS = 4
_ORDER = {"sleeve": ("sleeveless", "short", "long"), "length": ("short", "medium", "long")}
_CASUAL_COLOUR = ("{c}", "{c} please", "more {c}", "make it {c}", "in {c}", "needs to be {c}", "{c} colored",
                  "is {c}", "{c} one")
_CASUAL: dict[str, dict[str, tuple[str, ...]]] = {
    "pattern": {
        "solid": ("plain", "no print", "solid color", "no pattern"),
        "striped": ("stripes", "has stripes", "stripey", "striped"),
        "dotted": ("polka dots", "dots", "dotty", "with dots"),
        "checked": ("plaid", "checkered", "checks", "is plaid"),
        "floral": ("flowers", "floral", "flowery print", "has flowers"),
    },
    "sleeve": {
        "sleeveless": ("no sleeves", "sleeveless", "without sleeves"),
        "short": ("short sleeves", "short sleeved"),
        "long": ("long sleeves", "long sleeved", "full sleeves"),
    },
    "length": {"short": ("mini", "short"), "medium": ("knee length", "midi"), "long": ("maxi", "floor length", "long")},
    "neckline": {
        "round": ("round neck", "crew neck"),
        "v": ("v neck", "v neckline"),
        "square": ("square neck", "square neckline"),
        "high": ("turtleneck", "high neck", "higher neck"),
    },
}
_COMPARATIVES = {"sleeve": ("shorter sleeves", "longer sleeves"), "length": ("shorter", "longer")}
_VAGUE = ("looks nicer", "more fashionable", "less boring", "more casual", "prettier", "similar style",
          "more modern", "cuter")


def colloquial_plan(changes: Sequence[str], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Which changed attributes each of the two captions names: often only part of the change (one change
    unmentioned), sometimes the same change twice (the second annotator repeats the first)."""
    named = list(changes)
    if len(named) >= 2 and rng.random() < PARTIAL_SHARE:
        named.pop()
    if len(named) == 1:
        first, second = list(named), list(named)
    else:
        cut = int(rng.integers(1, len(named)))
        first, second = named[:cut], named[cut:]
        if rng.random() < REDUNDANT_SHARE:
            second = second + [first[int(rng.integers(len(first)))]]
    return first, second


def _casual_phrase(attribute: str, reference: Attributes, target: Attributes, rng: np.random.Generator) -> str:
    if attribute == "colour":
        word = _pick(_COLOUR_WORDS[target["colour"]], rng)
        return _pick(_CASUAL_COLOUR, rng).format(c=word)
    if attribute in _COMPARATIVES and rng.random() < 0.5:  # "longer": relative to the reference, as people write
        order = _ORDER[attribute]
        longer = order.index(target[attribute]) > order.index(reference[attribute])
        return _COMPARATIVES[attribute][int(longer)]
    return _pick(_CASUAL[attribute][target[attribute]], rng)


def write_colloquial(reference: Attributes, target: Attributes, rng: np.random.Generator) -> list[str]:
    """Two short relative captions the way Fashion IQ's annotators write them (see `colloquial_plan`):
    fragments ("more red", "stripey", "longer"), comparatives, and now and then a remark that says nothing."""
    changes = list(changed_attributes(reference, target))
    if not changes:
        raise ValueError("reference and target have the same attributes: nothing to describe")
    rng.shuffle(changes)
    captions: list[str] = []
    for attributes in colloquial_plan(changes, rng):
        for _ in range(_REDRAWS):  # two annotators rarely choose the very same words
            caption = _casual_caption(attributes, reference, target, rng)
            if caption not in captions:
                break
        captions.append(caption)
    return captions


def _casual_caption(attributes: Sequence[str], reference: Attributes, target: Attributes,
                    rng: np.random.Generator) -> str:
    phrases = [_casual_phrase(a, reference, target, rng) for a in attributes]
    if rng.random() < VAGUE_SHARE:
        phrases.insert(int(rng.integers(len(phrases) + 1)), _pick(_VAGUE, rng))
    return _pick((" and ", ", ", " "), rng).join(phrases)


def colloquial_words() -> tuple[str, ...]:
    """Every token `write_colloquial` can emit, sorted."""
    texts = [*_CASUAL_COLOUR, *_VAGUE, " and ", ", "]
    texts += [p for values in _CASUAL.values() for phrases in values.values() for p in phrases]
    texts += [p for pair in _COMPARATIVES.values() for p in pair]
    texts += [w for words in _COLOUR_WORDS.values() for w in words]
    return tuple(sorted({t for text in texts for t in _tokens(text.replace("{c}", ""))}))
