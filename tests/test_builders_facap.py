"""FACap builder: discovered categories, stage-1 caption columns, a leak-free deterministic validation split."""

from __future__ import annotations

import io
import json
import random

import pytest
import yaml
from PIL import Image

from facap_dataset.builders import build_facap
from facap_dataset.cli import main
from facap_dataset.errors import DataError, SchemaError, UnsafePathError

CATEGORIES = {"dress": "dresses", "skirt": "skirts"}


def _image_key(folder: str, index: int) -> str:
    return f"f200k_images/{folder}/casual/{51727800 + index}/{51727800 + index}_0.jpeg"


def _triplets(folder: str, count: int = 120, images: int = 90, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pairs = set()
    while len(pairs) < count:
        reference, target = rng.sample(range(images), 2)
        pairs.add((reference, target))
    return [
        {"candidate": _image_key(folder, r), "target": _image_key(folder, t), "captions": [f" make it like item {t}. "]}
        for r, t in sorted(pairs)
    ]


def _facap_raw(root, *, captions=True, missing_caption=None):
    """A FACap-shaped release: triplets, stage-1 captions and 8 px JPEGs under root/images."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 30)).save(buffer, format="JPEG")
    for category, folder in CATEGORIES.items():
        triplets = _triplets(folder)
        path = root / "raw" / "cir_triplets" / f"{category}_train_triplets.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(triplets))
        keys = {k for t in triplets for k in (t["candidate"], t["target"])}
        for key in keys:
            (root / "images" / key).parent.mkdir(parents=True, exist_ok=True)
            (root / "images" / key).write_bytes(buffer.getvalue())
        if captions:
            path = root / "raw" / "image_captions" / f"{category}_train_captions.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({k: f"a long caption of {k}" for k in keys if k != missing_caption}))
    return root / "raw", root / "images"


@pytest.fixture(scope="module")
def facap_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("facap")
    raw, images = _facap_raw(root, missing_caption=_image_key("dresses", 3))
    configs = build_facap(raw, images, root / "out", val_fraction=0.05)
    return root, configs


def test_categories_discovered_and_configs(facap_build):
    _, configs = facap_build
    assert list(configs) == ["dress", "dress-gallery", "skirt", "skirt-gallery"]
    assert list(configs["dress"]) == ["train", "validation"]
    row = configs["skirt"]["train"][0]
    assert (
        row["category"] == "skirt"
        and row["captions"] == [row["captions"][0]]
        and row["captions"][0].startswith(" make")
    )
    assert row["reference_caption"] == f"a long caption of {row['reference_id']}"
    assert row["target_caption"] == f"a long caption of {row['target_id']}"


def test_validation_split_by_reference_without_shared_images(facap_build):
    root, configs = facap_build
    for category, folder in CATEGORIES.items():
        train, validation = configs[category]["train"], configs[category]["validation"]
        references = {t["candidate"] for t in _triplets(folder)}
        val_references = set(validation["reference_id"])
        assert len(val_references) == -(-len(references) * 5 // 100)  # ceil(0.05 x references)
        every = [t for t in _triplets(folder) if t["candidate"] in val_references]
        assert len(validation) == len(every)  # a chosen reference takes all its triplets
        train_images = set(train["reference_id"]) | set(train["target_id"])
        val_images = val_references | set(validation["target_id"])
        assert not train_images & val_images
        gallery = configs[f"{category}-gallery"]
        assert set(gallery["train"]["image_id"]) == train_images
        assert set(gallery["validation"]["image_id"]) == val_images
        card = yaml.safe_load((root / "out" / "README.md").read_text().split("---")[1])
        dropped = card["skipped"][f"{category}/train: triplets sharing an image with the validation split (dropped)"]
        assert dropped == len(_triplets(folder)) - len(train) - len(validation) > 0


def test_split_is_deterministic_and_independent_of_file_order(tmp_path, facap_build):
    _, first = facap_build
    raw, images = _facap_raw(tmp_path, missing_caption=_image_key("dresses", 3))
    path = raw / "cir_triplets" / "dress_train_triplets.json"
    shuffled = json.loads(path.read_text())
    random.Random(1).shuffle(shuffled)
    path.write_text(json.dumps(shuffled))
    second = build_facap(raw, images, None, categories=["dress"], val_fraction=0.05)
    assert list(second) == ["dress", "dress-gallery"]
    assert set(second["dress"]["validation"]["reference_id"]) == set(first["dress"]["validation"]["reference_id"])
    assert len(second["dress"]["train"]) == len(first["dress"]["train"])


def test_uncaptioned_images_are_null_and_counted(facap_build):
    root, configs = facap_build
    key = _image_key("dresses", 3)
    rows = [
        r
        for split in ("train", "validation")
        for r in configs["dress"][split].select_columns(
            ["reference_id", "target_id", "reference_caption", "target_caption"]
        )
    ]
    assert all(r["reference_caption"] is None for r in rows if r["reference_id"] == key)
    assert any(r["reference_id"] == key or r["target_id"] == key for r in rows)
    text = (root / "out" / "README.md").read_text()
    assert "images without a stage-1 caption (caption left null)" in text
    assert "set of images its triplets use" in text and "SHA-256" in text


def test_without_captions_folder_and_without_validation(tmp_path):
    raw, images = _facap_raw(tmp_path, captions=False)
    configs = build_facap(raw, images, None, val_fraction=0)
    assert list(configs["dress"]) == ["train"] and len(configs["dress"]["train"]) == 120
    assert "reference_caption" not in configs["dress"]["train"].column_names


def test_bad_facap_inputs(tmp_path):
    raw, images = _facap_raw(tmp_path)
    with pytest.raises(DataError, match="unknown category 'top'; expected one of: dress, skirt"):
        build_facap(raw, images, None, categories=["top"])
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
        build_facap(raw, images, None, val_fraction=1.0)
    (raw / "cir_triplets" / "skirt_train_triplets.json").write_text('[{"target": "x", "captions": ["y"]}]')
    with pytest.raises(SchemaError, match="skirt_train_triplets.json: entry 0 has no usable 'candidate'"):
        build_facap(raw, images, None, categories=["skirt"])
    (raw / "cir_triplets" / "skirt_train_triplets.json").write_text(
        json.dumps([{"candidate": "../outside.jpeg", "target": _image_key("skirts", 1), "captions": ["y"]}])
    )
    with pytest.raises(UnsafePathError, match="'../outside.jpeg' escapes the image root"):
        build_facap(raw, images, None, categories=["skirt"], on_missing="skip", val_fraction=0)
    with pytest.raises(DataError, match="'skirt': no train triplet is left after taking the validation split"):
        build_facap(raw, images, None, categories=["skirt"])  # its one reference image goes to validation
    (raw / "image_captions" / "dress_train_captions.json").unlink()
    with pytest.raises(DataError, match="annotation file not found: .*dress_train_captions.json"):
        build_facap(raw, images, None, categories=["dress"])


def test_cli_facap(tmp_path, capsys):
    raw, images = _facap_raw(tmp_path)
    out = tmp_path / "out"
    code = main(
        [
            "build",
            "facap",
            "--raw-dir",
            str(raw),
            "--images-dir",
            str(images),
            "--out",
            str(out),
            "--categories",
            "skirt",
            "--val-fraction",
            "0.1",
        ]
    )
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    text = (out / "README.md").read_text()
    assert "--categories skirt --val-fraction 0.1" in text and "Fashion200k" in text


def test_build_into_facap_then_the_literal_load_dataset_line(tmp_path, monkeypatch):
    """README's usage line, as written: `load_dataset("facap", "dress")` from the folder's parent, offline."""
    import datasets
    from datasets import load_dataset

    import facap_dataset
    from card_checks import validate_dataset_card

    raw, images = _facap_raw(tmp_path / "release")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    argv = ["build", "facap", "--raw-dir", str(raw), "--images-dir", str(images), "--out", "facap"]
    assert main(argv) == 0

    dress = load_dataset("facap", "dress")

    assert set(dress) == {"train", "validation"} and dress["train"][0]["category"] == "dress"
    assert dress["train"][0]["reference_image"].size == (8, 8)
    ours = facap_dataset.load("facap", "dress", split="validation")
    assert ours["reference_id"] == dress["validation"]["reference_id"]
    card = validate_dataset_card(work / "facap", num_examples=sum(len(split) for split in dress.values())
                                 + len(load_dataset("facap", "skirt", split="train"))
                                 + len(load_dataset("facap", "skirt", split="validation")))
    assert card.data.license == "other" and card.data.license_name == "facap-release-terms"
    assert card.data.size_categories == ["n<1K"] and card.data.task_categories == ["image-to-image", "text-to-image"]
    assert "@article{garderes2025facap" in card.text and "@inproceedings{han2017fashion200k" in card.text
    assert "Configs: `dress`, `dress-gallery`, `skirt`, `skirt-gallery`." in card.text
