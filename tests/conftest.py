"""Shared fixtures. One section per area; fixtures are session-scoped where building them costs time."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------- [coordinator]
# No hub downloads on these machines; anything that tries must fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
FASHIONIQ_RAW = REPO_ROOT.parent / "shared" / "data" / "fashioniq"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def fashioniq_annotations() -> Path:
    """The real Fashion IQ annotation files (captions/ and image_splits/), read-only."""
    if not (FASHIONIQ_RAW / "captions").is_dir():
        pytest.fail(f"the real Fashion IQ annotation files are missing from {FASHIONIQ_RAW}")
    return FASHIONIQ_RAW


# ------------------------------------------------------------------------------------------------ [synthetic]


# -------------------------------------------------------------------------------------------------- [model]
