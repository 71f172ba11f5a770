"""Fashion composed-image-retrieval datasets: builders, the synthetic catalogue and the annotation pipeline."""

from .captions import CAPTION_JOIN_RULES, join_captions
from .errors import DataError, MissingImageError, SchemaError, UnsafePathError
from .loading import load
from .schema import FASHIONIQ_CATEGORIES, GALLERY_FEATURES, SPLITS, TRIPLET_FEATURES, gallery_config

__all__ = [
    "CAPTION_JOIN_RULES",
    "DataError",
    "FASHIONIQ_CATEGORIES",
    "GALLERY_FEATURES",
    "MissingImageError",
    "SPLITS",
    "SchemaError",
    "TRIPLET_FEATURES",
    "UnsafePathError",
    "gallery_config",
    "join_captions",
    "load",
]
