"""`facap_dataset.load`: built folders and Hub ids resolved by intent; a stray cwd folder never wins silently."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import pytest
from datasets import Dataset, DatasetDict
from PIL import Image

from facap_dataset.errors import DataError
from facap_dataset.export import DatasetCardInfo, write_dataset
from facap_dataset.loading import load, open_dataset, resolve
from facap_dataset.schema import GALLERY_FEATURES


@pytest.fixture
def built(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "blue").save(buffer, format="JPEG")
    rows = {
        "image_id": ["a", "b", "c"],
        "category": ["shirt"] * 3,
        "image": [{"bytes": buffer.getvalue(), "path": None}] * 3,
    }
    configs = {"shirt-gallery": DatasetDict(validation=Dataset.from_dict(rows, features=GALLERY_FEATURES))}
    card = DatasetCardInfo(pretty_name="Load test", description="d", source="s", license="mit", build_command="pytest")
    return write_dataset(tmp_path / "org" / "name", configs, card=card)


def test_load_a_built_folder_by_path(built, tmp_path, monkeypatch):
    gallery = load(built, "shirt-gallery", split="validation", cache_dir=str(tmp_path / "cache"))
    assert gallery["image_id"] == ["a", "b", "c"] and gallery[0]["image"].mode == "RGB"
    monkeypatch.chdir(tmp_path)
    assert resolve("./org/name") == resolve(str(built)) == resolve(Path("org/name")) == str(built)
    streamed = load("./org/name", "shirt-gallery", split="validation", streaming=True)
    assert [row["image_id"] for row in streamed] == ["a", "b", "c"]


def test_a_cwd_folder_wins_over_a_hub_id_as_in_datasets(built, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("org/name") == str(built)  # `datasets.load_dataset("org/name")` reads the folder too
    assert load("org/name", "shirt-gallery", split="validation")["image_id"] == ["a", "b", "c"]
    assert resolve("hf://datasets/org/name") == "hf://datasets/org/name"
    monkeypatch.chdir(built)
    assert resolve("org/name") == "hf://datasets/org/name"  # nothing of that name here: the Hub


def test_open_dataset_lists_configs_and_names_missing_ones(built):
    opened = open_dataset(built)
    assert opened.configs == ("shirt-gallery",)
    assert opened.split_sizes("shirt-gallery") == {"validation": 3}
    assert opened.load_split("shirt-gallery", "validation")["image_id"] == ["a", "b", "c"]
    with pytest.raises(DataError, match=r"has no config 'dress' \(it has: shirt-gallery\)"):
        opened.load_split("dress", "validation")
    with pytest.raises(DataError, match=r"no split 'train' \(splits: validation\)"):
        opened.load_split("shirt-gallery", "train")


def test_open_dataset_names_an_unreadable_shard(built, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # nothing cached from other runs
    shard = next(Path(built).rglob("*.parquet"))
    shard.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"config 'shirt-gallery', split 'validation' cannot be read"):
        open_dataset(built).load_split("shirt-gallery", "validation")


def test_bad_names_and_folders(built, tmp_path):
    with pytest.raises(DataError, match="has no config 'dress'; it has: shirt-gallery"):
        load(built, "dress")
    with pytest.raises(DataError, match="no dataset folder at"):
        resolve(tmp_path / "absent")
    with pytest.raises(DataError, match="is not a built dataset folder"):
        resolve(tmp_path / "org")
    with pytest.raises(DataError, match="neither a dataset folder nor a Hub dataset id"):
        resolve("a/b/c")
