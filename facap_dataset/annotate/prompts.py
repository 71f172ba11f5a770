"""Versioned prompt templates for the two stages, and user overrides.

A template is plain text with `str.format` placeholders (`{category}`; literal braces are `{{ }}`). Its
version is part of every cache key, so changing a prompt never reuses answers to the old one. Built-in
templates carry a hand-set version; a user's template file is versioned by a hash of its text.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


class PromptError(DataError):
    """A prompt template is unreadable, misses a required placeholder or uses an unknown one."""


@dataclass(frozen=True)
class PromptTemplate:
    """A named, versioned template. It may use any of the stage's `fields` and must use its `required` ones."""

    name: str
    version: str
    text: str
    fields: tuple[str, ...]
    required: tuple[str, ...]

    def __post_init__(self) -> None:
        used = placeholders(self.text, origin=self.version)
        missing = [field for field in self.required if field not in used]
        if missing:
            raise PromptError(
                f"prompt template {self.version!r} is missing the required placeholder(s) "
                + ", ".join("{" + field + "}" for field in missing)
            )
        unknown = sorted(used - set(self.fields))
        if unknown:
            raise PromptError(
                f"prompt template {self.version!r} uses unknown placeholder(s) "
                + ", ".join("{" + field + "}" for field in unknown)
                + f"; the {self.name} stage provides " + ", ".join("{" + f + "}" for f in self.fields)
            )

    def render(self, **values: str) -> str:
        """Fill the template; `values` must hold every field of the stage (unused ones are ignored)."""
        return self.text.format(**{field: values[field] for field in self.fields})


def placeholders(text: str, *, origin: str) -> set[str]:
    """The field names a format string uses; positional and attribute/index fields are refused."""
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as error:
        raise PromptError(f"prompt template {origin!r} is not a valid format string: {error}") from error
    bad = sorted(name for name in names if not name.isidentifier())
    if bad:
        raise PromptError(f"prompt template {origin!r} has invalid placeholder(s) {bad}; use {{name}} fields")
    return names


STAGE_FIELDS = {
    "caption": ("category",),
    "modification": ("category", "reference_caption", "target_caption"),
    "enhance": ("category", "reference_caption", "target_caption", "original_captions"),
}
# What a template cannot do without: stage 2 is meaningless without both captions, enhance without the
# original human texts. A caption prompt may describe "the garment" without naming its category.
REQUIRED_FIELDS = {
    "caption": (),
    "modification": STAGE_FIELDS["modification"][1:],
    "enhance": STAGE_FIELDS["enhance"][1:],
}


def _builtin(stage: str, version: str, text: str) -> PromptTemplate:
    """A built-in template of `stage`; its version is set by hand and must change whenever its text does."""
    return PromptTemplate(
        name=stage, version=version, text=text, fields=STAGE_FIELDS[stage], required=REQUIRED_FIELDS[stage]
    )


# Both pair stages open with the two captions and name the same attribute list.
_PAIR_HEADER = (
    "Two {category} products are described below.\n"
    "Reference: {reference_caption}\n"
    "Target: {target_caption}\n"
)
_ATTRIBUTE_LIST = "(colour, material, pattern, neckline, sleeves, length, fit, details)"

CAPTION_V1 = _builtin(
    "caption",
    "caption-v1",
    "You are a fashion expert writing a product description for an online catalogue. Describe the "
    "{category} in this image in detail, using precise fashion vocabulary. Cover its garment type, "
    "colour(s), material and texture, pattern or print, neckline or collar, sleeves, length, fit and "
    "silhouette, and notable details (buttons, zips, pockets, embellishments, closures). Describe only "
    "the garment, not the model, pose or background. Answer with one paragraph of plain text.",
)

MODIFICATION_V1 = _builtin(
    "modification",
    "modification-v1",
    _PAIR_HEADER
    + "Write ONE sentence telling a shopper how to change the reference into the target, naming only "
    "the attributes that differ "
    + _ATTRIBUTE_LIST
    + ", for example: \"Make it sleeveless and navy blue with a fitted waist and a shorter hem.\" "
    "Do not describe what stays the same, do not mention any other kind of garment, and answer with "
    "the sentence only.",
)

ENHANCE_V1 = _builtin(
    "enhance",
    "enhance-v1",
    _PAIR_HEADER
    + "Shoppers described the change as: {original_captions}\n"
    "Write ONE detailed sentence telling a shopper how to change the reference into the target, naming "
    "every attribute that differs "
    + _ATTRIBUTE_LIST
    + " and keeping what the shoppers asked for. Do not describe what stays the same, do not mention any "
    "other kind of garment, and answer with the sentence only.",
)

BUILTIN_TEMPLATES = {template.name: template for template in (CAPTION_V1, MODIFICATION_V1, ENHANCE_V1)}


def load_template(stage: str, path: str | Path | None = None) -> PromptTemplate:
    """The built-in template of `stage`, or the user's template file checked against the stage's fields."""
    builtin = BUILTIN_TEMPLATES[stage]
    if path is None:
        return builtin
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PromptError(f"cannot read prompt template {path}: {error}") from error
    if not text.strip():
        raise PromptError(f"prompt template {path} is empty")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    try:
        return PromptTemplate(name=stage, version=f"{stage}-{path.stem}-{digest}", text=text, fields=builtin.fields,
                              required=builtin.required)
    except PromptError as error:
        raise PromptError(f"{path}: {error}") from None
