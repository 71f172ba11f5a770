"""The dataset schema (the `load_dataset` contract of every built folder): one place that names configs, splits
and features."""

from __future__ import annotations

from datasets import Features, Image, List, Value

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "validation", "test")
GALLERY_SUFFIX = "-gallery"

TRIPLET_FEATURES = Features(
    {
        "reference_id": Value("string"),
        "target_id": Value("string"),
        "captions": List(Value("string")),
        "category": Value("string"),
        "reference_image": Image(),
        "target_image": Image(),
    }
)

# An optional extra triplet column: one hard negative per triplet (an image close to the target that is not
# it). When every training config has it, the trainer adds these images to the loss's candidates.
NEGATIVE_IMAGE_COLUMN = "negative_image"

GALLERY_FEATURES = Features(
    {
        "image_id": Value("string"),
        "category": Value("string"),
        "image": Image(),
    }
)


def triplet_features(extra: dict | None = None) -> Features:
    """The triplet features, followed by dataset-specific extra columns (e.g. stage-1 captions)."""
    clashes = set(extra or {}) & set(TRIPLET_FEATURES)
    if clashes:
        raise ValueError(f"extra columns may not redefine triplet columns: {sorted(clashes)}")
    return Features({**TRIPLET_FEATURES, **(extra or {})})


def gallery_config(category: str) -> str:
    """Name of the gallery config of a triplet config: `dress` -> `dress-gallery`."""
    return f"{category}{GALLERY_SUFFIX}"


def is_gallery_config(config: str) -> bool:
    return config.endswith(GALLERY_SUFFIX)
