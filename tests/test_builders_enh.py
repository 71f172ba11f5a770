"""enhFashionIQ builder: Fashion IQ pairs and images with enhanced texts; absent pairs are reported."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from PIL import Image

from facap_dataset.builders import build_enhfashioniq
from facap_dataset.errors import DataError

GALLERY = ["A1", "A2", "A3", "A4"]
VAL = [
    {"candidate": "A1", "target": "A2", "captions": ["is red", "short"]},
    {"candidate": "A3", "target": "A4", "captions": ["is blue", "long"]},
    {"candidate": "A1", "target": "A2", "captions": ["again", "twice"]},  # a repeated pair
]
TEST = [{"candidate": "A1", "captions": ["t1", "t1b"]}, {"candidate": "A1", "captions": ["t2", "t2b"]}]


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


@pytest.fixture
def release(tmp_path):
    raw = tmp_path / "raw"
    for split, triplets in (("val", VAL), ("test", TEST)):
        _write(raw / "captions" / f"cap.dress.{split}.json", triplets)
        _write(raw / "image_splits" / f"split.dress.{split}.json", GALLERY)
    (raw / "images").mkdir()
    for asin in GALLERY:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), "white").save(buffer, format="JPEG")
        (raw / "images" / f"{asin}.jpg").write_bytes(buffer.getvalue())
    enhanced = tmp_path / "enhanced"
    _write(
        enhanced / "cap.dress.val.json",
        [
            {"candidate": "A1", "target": "A2", "captions": ["is a red mini dress with short sleeves"]},
            {"candidate": "A1", "target": "A2", "captions": ["is a red dress, second pair"]},
            {"candidate": "A4", "target": "A1", "captions": ["not a Fashion IQ pair"]},
        ],
    )
    _write(
        enhanced / "cap.dress.test.json",
        [
            {"candidate": "A1", "captions": ["first test text"]},
            {"candidate": "A1", "captions": ["second test text"]},
        ],
    )
    return raw, enhanced


def test_texts_replaced_and_absent_pairs_reported(release, tmp_path, capsys):
    raw, enhanced = release
    configs = build_enhfashioniq(raw, enhanced, tmp_path / "out")
    validation = configs["dress"]["validation"]
    assert validation["captions"] == [["is a red mini dress with short sleeves"], ["is a red dress, second pair"]]
    assert validation["reference_id"] == ["A1", "A1"]
    assert configs["dress"]["test"]["captions"] == [["first test text"], ["second test text"]]
    assert configs["dress"]["test"]["target_id"] == [None, None]
    assert configs["dress-gallery"]["validation"]["image_id"] == GALLERY
    card = yaml.safe_load((tmp_path / "out" / "README.md").read_text().split("---")[1])
    assert card["pretty_name"] == "enhFashionIQ"
    assert card["skipped"] == {
        "dress/validation: Fashion IQ pairs absent from the enhanced captions (dropped)": 1,
        "dress/validation: enhanced pairs not in Fashion IQ (ignored)": 1,
    }
    assert "Fashion IQ pairs absent from the enhanced captions (dropped): 1" in capsys.readouterr().err
    from card_checks import validate_dataset_card

    text = validate_dataset_card(tmp_path / "out", num_examples=4).text
    assert "@article{garderes2025facap" in text and "@inproceedings{wu2021fashioniq" in text


def test_splits_follow_the_enhanced_files(release, tmp_path):
    raw, enhanced = release
    (enhanced / "cap.dress.test.json").unlink()
    assert list(build_enhfashioniq(raw, enhanced, None)["dress"]) == ["validation"]
    with pytest.raises(DataError, match="annotation file not found: .*enhanced/cap.dress.test.json"):
        build_enhfashioniq(raw, enhanced, None, splits=["validation", "test"])
    (enhanced / "cap.dress.val.json").unlink()
    with pytest.raises(DataError, match="no caption file .* in .*enhanced"):
        build_enhfashioniq(raw, enhanced, None)


def test_no_matching_pair_is_an_error(release):
    raw, enhanced = release
    _write(enhanced / "cap.dress.val.json", [{"candidate": "A4", "target": "A3", "captions": ["x"]}])
    with pytest.raises(DataError, match="none of the 3 Fashion IQ pairs of dress/validation has an enhanced text"):
        build_enhfashioniq(raw, enhanced, None, splits=["validation"])
