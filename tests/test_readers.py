"""Raw-format readers: the exact layouts of DESIGN.md 3.1, and a clear error naming the file otherwise."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from facap_dataset import readers
from facap_dataset.errors import DataError, SchemaError


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_real_fashioniq_files_read_exactly(fashioniq_annotations):
    path = readers.fashioniq_captions_path(fashioniq_annotations, "toptee", "validation")
    triplets = readers.read_triplets(path, target_required=True)
    raw = json.loads(path.read_text())
    assert len(triplets) == 1961
    assert [list(t.captions) for t in triplets] == [entry["captions"] for entry in raw]
    assert any(c == "" for t in triplets for c in t.captions)  # empty captions survive
    assert any(c.startswith(" ") for t in triplets for c in t.captions)  # so do leading spaces
    test = readers.read_triplets(
        readers.fashioniq_captions_path(fashioniq_annotations, "dress", "test"), target_required=False
    )
    assert len(test) == 2024 and all(t.target is None for t in test)
    gallery = readers.read_image_split(readers.fashioniq_split_path(fashioniq_annotations, "shirt", "validation"))
    assert len(gallery) == 6346 and gallery[0] == "B000KENMD8"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("  \n", "is empty"),
        ("[]", "holds no triplets"),
        ('[{"candidate": "A", "target": "B", "captions": ["x"]}', "malformed JSON"),
        ('{"candidate": "A"}', "expected a JSON list of triplets"),
        ('[{"target": "B", "captions": ["x"]}]', "entry 0 has no usable 'candidate': missing"),
        ('[{"candidate": "A", "target": "B"}]', "entry 0 has no 'captions'"),
        ('[{"candidate": "A", "target": "B", "captions": []}]', "non-empty list of strings"),
        ('[{"candidate": "A", "target": "B", "captions": "is red"}]', "non-empty list of strings"),
        ('[{"candidate": "A", "captions": ["x"]}]', "entry 0 has no usable 'target'"),
        ('[{"candidate": 7, "target": "B", "captions": ["x"]}]', r"7 \(not a non-empty string\)"),
        ('["A"]', "entry 0 is a str, expected an object"),
    ],
)
def test_bad_triplet_files_name_file_and_problem(tmp_path, content, message):
    path = _write(tmp_path / "cap.dress.val.json", content)
    with pytest.raises(SchemaError, match=message) as error:
        readers.read_triplets(path, target_required=True)
    assert "cap.dress.val.json" in str(error.value)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="annotation file not found: .*nothing.json"):
        readers.read_json(tmp_path / "nothing.json")
    path = tmp_path / "latin1.json"
    path.write_bytes('["caf\xe9"]'.encode("latin-1"))
    with pytest.raises(SchemaError, match="latin1.json: not UTF-8"):
        readers.read_json(path)


def test_test_split_keeps_a_target_given_anyway(tmp_path):
    path = _write(
        tmp_path / "c.json",
        [{"candidate": "A", "captions": ["x", "y"]}, {"candidate": "B", "target": "C", "captions": ["z"]}],
    )
    assert [t.target for t in readers.read_triplets(path, target_required=False)] == [None, "C"]


def test_image_split_validation_and_order(tmp_path):
    assert readers.read_image_split(_write(tmp_path / "s.json", ["B", "A", "B"])) == ["B", "A"]
    with pytest.raises(SchemaError, match="entry 1 is None"):
        readers.read_image_split(_write(tmp_path / "bad.json", ["A", None]))
    with pytest.raises(SchemaError, match="holds no image ids"):
        readers.read_image_split(_write(tmp_path / "empty.json", []))


def test_facap_captions_and_categories(tmp_path):
    _write(readers.facap_triplets_path(tmp_path, "skirt"), [])
    _write(readers.facap_triplets_path(tmp_path, "dress"), [])
    _write(tmp_path / "cir_triplets" / "notes.txt", "not a triplet file")
    assert readers.discover_facap_categories(tmp_path) == ["dress", "skirt"]
    captions = _write(readers.facap_captions_path(tmp_path, "dress"), {"a/1.jpeg": "a long caption"})
    assert readers.read_facap_captions(captions) == {"a/1.jpeg": "a long caption"}
    with pytest.raises(SchemaError, match="the caption of 'a/1.jpeg' is 3"):
        readers.read_facap_captions(_write(tmp_path / "bad.json", {"a/1.jpeg": 3}))
    with pytest.raises(DataError, match="not a FACap release"):
        readers.discover_facap_categories(tmp_path / "elsewhere")


def _saved(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_rgb_jpeg_embedded_as_released(tmp_path):
    data = _saved(Image.effect_noise((32, 24), 40).convert("RGB"), "JPEG")
    path = tmp_path / "rgb.jpg"
    path.write_bytes(data)
    assert readers.read_image_bytes(path) == data


@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"),
        (lambda: Image.new("L", (8, 8), 128), "JPEG"),
        (lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 255)), "PNG"),
        (lambda: Image.fromarray(np.full((8, 8), 51400, np.uint16)), "PNG"),
        (lambda: Image.new("RGB", (8, 8), (255, 0, 0)), "PNG"),
    ],
    ids=["cmyk-jpeg", "gray-jpeg", "rgba-png", "16bit-png", "rgb-png"],
)
def test_other_images_become_rgb_jpeg(tmp_path, make, fmt):
    path = tmp_path / "image"
    path.write_bytes(_saved(make(), fmt))
    with Image.open(io.BytesIO(readers.read_image_bytes(path))) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (8, 8))


def test_truncated_image_raises_naming_it(tmp_path):
    data = _saved(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG")
    path = tmp_path / "B00TRUNC.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="B00TRUNC.jpg"):
        readers.read_image_bytes(path)
    with pytest.raises(FileNotFoundError):
        readers.read_image_bytes(tmp_path / "absent.jpg")


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("RGB", {}),
        ("RGB", {"progressive": True}),
        ("RGB", {"exif": b"Exif\x00\x00" + b"\x00" * 40}),
        ("L", {}),
        ("CMYK", {}),
    ],
    ids=["rgb", "rgb-progressive", "rgb-exif", "gray", "cmyk"],
)
def test_rgb_jpeg_sniffing_agrees_with_pillow(mode, options):
    buffer = io.BytesIO()
    Image.new(mode, (8, 8)).save(buffer, format="JPEG", **options)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as image:
        assert readers.is_rgb_jpeg(data) == (image.mode == "RGB")
    assert not readers.is_rgb_jpeg(data[:4])
    assert not readers.is_rgb_jpeg(_saved(Image.new("RGB", (8, 8)), "PNG"))
