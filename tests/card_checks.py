"""Offline checks of a dataset card against the Hub's metadata vocabularies (the Hub's own validation is an
HTTP call): a card that fails them fails the test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets.utils
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from evaluate.config import HF_HUB_ALLOWED_TASKS
from huggingface_hub import DatasetCard, DatasetCardData

_RESOURCES = Path(datasets.utils.__file__).parent / "resources"
SIZE_CATEGORIES = json.loads((_RESOURCES / "size_categories.json").read_text())
LANGUAGES = json.loads((_RESOURCES / "languages.json").read_text())
_BIBTEX = re.compile(r"```bibtex\n@\w+\{[^,\n]+,\n(?:.*\n)+?\}\n```")


def validate_dataset_card(folder: Path, *, num_examples: int | None = None) -> DatasetCard:
    """Load `folder/README.md` with huggingface_hub and check every metadata field the Hub validates."""
    card = DatasetCard.load(Path(folder) / "README.md")
    data = card.data
    assert isinstance(data, DatasetCardData)
    assert DatasetCardData(**data.to_dict()).to_dict() == data.to_dict()  # round-trips through the class
    assert isinstance(data.pretty_name, str) and data.pretty_name
    assert data.language and set(data.language) <= set(LANGUAGES), data.language
    assert data.task_categories and set(data.task_categories) <= set(HF_HUB_ALLOWED_TASKS), data.task_categories
    assert len(data.size_categories) == 1 and data.size_categories[0] in SIZE_CATEGORIES, data.size_categories
    if data.license == "other":
        assert data.get("license_name") and re.fullmatch(r"[a-z0-9][a-z0-9.-]*", data.license_name)
        assert str(data.get("license_link", "")).startswith("https://")
    configs = MetadataConfigs.from_dataset_card_data(data)
    infos = DatasetInfosDict.from_dataset_card_data(data)
    assert configs and set(configs) == set(infos)
    blocks = _BIBTEX.findall(card.text)
    assert blocks, "the card has no BibTeX citation block"
    if num_examples is not None:
        triplet_rows = sum(s.num_examples for name, info in infos.items() if not name.endswith("-gallery")
                           for s in info.splits.values())
        assert triplet_rows == num_examples
    return card
