"""Fashion IQ builder: the real annotation files with generated images, every option, every bad input."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import yaml
from datasets import load_dataset
from PIL import Image

from facap_dataset.builders import build_fashioniq
from facap_dataset.cli import main
from facap_dataset.errors import DataError, MissingImageError, SchemaError, UnsafePathError

REAL_VALIDATION = {"dress": (2017, 3817), "shirt": (2038, 6346), "toptee": (1961, 5373)}


def _jpeg(colour=(200, 30, 30), size=(16, 16), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _card_yaml(out_dir) -> dict:
    text = (out_dir / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


@pytest.fixture(scope="session")
def fiq_raw(tmp_path_factory, fashioniq_annotations):
    """The real annotation files plus one 16 px JPEG, hard-linked as every image the val galleries and the
    dress test gallery name (about 19k links, no image data duplicated)."""
    raw = tmp_path_factory.mktemp("fashioniq-raw")
    for folder in ("captions", "image_splits"):
        shutil.copytree(fashioniq_annotations / folder, raw / folder)
    (raw / "images").mkdir()
    source = raw / "one.jpg"
    source.write_bytes(_jpeg())
    names = {"split.dress.test.json"} | {f"split.{c}.val.json" for c in REAL_VALIDATION}
    for asin in {a for name in names for a in json.loads((raw / "image_splits" / name).read_text())}:
        try:
            os.link(source, raw / "images" / f"{asin}.jpg")
        except OSError:  # a filesystem without hard links
            shutil.copyfile(source, raw / "images" / f"{asin}.jpg")
    return raw


@pytest.fixture(scope="session")
def fiq_val(tmp_path_factory, fiq_raw):
    out = tmp_path_factory.mktemp("fiq-val") / "fashioniq"
    configs = build_fashioniq(fiq_raw, out, splits=["validation"], num_proc=2)
    return out, configs


def test_real_validation_counts(fiq_val):
    out, configs = fiq_val
    assert set(configs) == {c for cat in REAL_VALIDATION for c in (cat, f"{cat}-gallery")}
    for category, (triplets, gallery) in REAL_VALIDATION.items():
        assert list(configs[category]) == ["validation"]
        assert len(configs[category]["validation"]) == triplets
        assert len(configs[f"{category}-gallery"]["validation"]) == gallery
    card = _card_yaml(out)
    sizes = {info["config_name"]: info["splits"][0]["num_examples"] for info in card["dataset_info"]}
    assert sizes == {
        **{c: n for c, (n, _) in REAL_VALIDATION.items()},
        **{f"{c}-gallery": g for c, (_, g) in REAL_VALIDATION.items()},
    }
    assert "skipped" not in card


def test_card_states_source_licence_and_command(fiq_val):
    text = (fiq_val[0] / "README.md").read_text()
    assert "Community Data License Agreement (CDLA" in text
    assert "The images are not covered" in text
    assert "python -m facap_dataset build fashioniq --raw-dir" in text and "--splits validation" in text
    assert "Nothing was skipped." in text


def test_captions_survive_exactly(fiq_val, fashioniq_annotations):
    raw = json.loads((fashioniq_annotations / "captions" / "cap.toptee.val.json").read_text())
    built = fiq_val[1]["toptee"]["validation"].select_columns(["reference_id", "target_id", "captions", "category"])
    assert built["captions"] == [entry["captions"] for entry in raw]
    assert built["reference_id"] == [entry["candidate"] for entry in raw]
    assert built["target_id"] == [entry["target"] for entry in raw]
    assert set(built["category"]) == {"toptee"}
    assert sum(c == "" for captions in built["captions"] for c in captions) == 2
    assert any(c.startswith(" ") for captions in built["captions"] for c in captions)


def test_load_dataset_and_streaming_agree(fiq_val, tmp_path):
    out = str(fiq_val[0])
    loaded = load_dataset(out, "shirt", split="validation", cache_dir=str(tmp_path))
    streamed = load_dataset(out, "shirt", split="validation", streaming=True)
    columns = ["reference_id", "target_id", "captions"]
    assert [dict(row) for row in streamed.select_columns(columns)] == loaded.select_columns(columns).to_list()
    first = next(iter(streamed))
    assert first["reference_image"].mode == "RGB" and first["reference_image"].size == (16, 16)
    assert np.array_equal(np.asarray(first["target_image"]), np.asarray(loaded[0]["target_image"]))
    gallery = load_dataset(out, "shirt-gallery", split="validation", cache_dir=str(tmp_path))
    assert len(gallery) == 6346 and gallery.column_names == ["image_id", "category", "image"]


def test_test_split_targets_are_null(fiq_raw, tmp_path):
    configs = build_fashioniq(fiq_raw, tmp_path / "out", categories=["dress"], splits=["test"])
    test = configs["dress"]["test"]
    assert len(test) == 2024 and len(configs["dress-gallery"]["test"]) == 3818
    assert set(test["target_id"]) == {None}
    assert all(row["target_image"] is None for row in test.select(range(5)))
    assert set(configs) == {"dress", "dress-gallery"}


# ----------------------------------------------------------------------------------------- small releases

GALLERY = ["A1", "A2", "A3", "A4"]
TRIPLETS = [
    {"candidate": "A1", "target": "A2", "captions": ["is red", " has no sleeves"]},
    {"candidate": "A3", "target": "A4", "captions": ["", "is blue"]},
    {"candidate": "A2", "target": "A3", "captions": ["is longer", "is shorter"]},
]


def _small_raw(root, *, triplets=TRIPLETS, gallery=GALLERY, images=GALLERY, category="dress", split="val"):
    (root / "captions").mkdir(parents=True, exist_ok=True)
    (root / "image_splits").mkdir(exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    caption_file = root / "captions" / f"cap.{category}.{split}.json"
    caption_file.write_text(triplets if isinstance(triplets, str) else json.dumps(triplets))
    (root / "image_splits" / f"split.{category}.{split}.json").write_text(json.dumps(gallery))
    for index, asin in enumerate(images):
        (root / "images" / f"{asin}.jpg").write_bytes(_jpeg((40 * index, 100, 200)))
    return root


def test_small_release_rows_and_images_dir_elsewhere(tmp_path):
    raw = _small_raw(tmp_path / "raw")
    shutil.move(raw / "images", tmp_path / "pictures")
    configs = build_fashioniq(raw, tmp_path / "out", images_dir=tmp_path / "pictures")
    row = configs["dress"]["validation"][0]
    assert (row["reference_id"], row["target_id"], row["captions"]) == ("A1", "A2", ["is red", " has no sleeves"])
    assert row["reference_image"].getpixel((8, 8))[2] > 150  # the pixels of A1.jpg, not a placeholder
    assert configs["dress-gallery"]["validation"]["image_id"] == GALLERY
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"--images-dir {tmp_path / 'pictures'}" in card


def test_missing_images_error_names_first_few_and_count(tmp_path):
    many = [f"M{i:02d}" for i in range(12)]
    raw = _small_raw(tmp_path / "raw", gallery=GALLERY + many, images=GALLERY)
    with pytest.raises(MissingImageError) as error:
        build_fashioniq(raw, tmp_path / "out")
    message = str(error.value)
    assert message.startswith("12 image(s) missing: ") and "M00.jpg" in message and "M04.jpg" in message
    assert "M11.jpg" not in message and "--on-missing skip" in message
    assert not (tmp_path / "out").exists()


def test_skip_drops_dependents_and_records_counts(tmp_path):
    raw = _small_raw(tmp_path / "raw", gallery=GALLERY + ["M1"], images=["A1", "A2", "A3"])
    configs = build_fashioniq(raw, tmp_path / "out", on_missing="skip")
    assert configs["dress"]["validation"]["reference_id"] == ["A1", "A2"]  # A3 -> A4 needed A4
    assert configs["dress-gallery"]["validation"]["image_id"] == ["A1", "A2", "A3"]
    skipped = _card_yaml(tmp_path / "out")["skipped"]
    assert skipped == {
        "images missing from the image folder": 2,
        "dress/validation: triplets needing a missing or unreadable image": 1,
        "dress-gallery/validation: gallery images missing or unreadable": 2,
    }
    assert "`A4`: missing" in (tmp_path / "out" / "README.md").read_text()


def test_truncated_jpeg_is_an_error_or_a_counted_skip(tmp_path):
    raw = _small_raw(tmp_path / "raw")
    data = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(data, format="JPEG")
    (raw / "images" / "A4.jpg").write_bytes(data.getvalue()[:300])
    with pytest.raises(DataError, match=r"1 image\(s\) unreadable: image .*A4.jpg cannot be decoded"):
        build_fashioniq(raw, tmp_path / "out")
    build_fashioniq(raw, tmp_path / "out", on_missing="skip")
    skipped = _card_yaml(tmp_path / "out")["skipped"]
    assert skipped["images unreadable (truncated, corrupt or refused as a decompression bomb)"] == 1


def test_cmyk_gray_rgba_and_16bit_images_are_converted(tmp_path):
    raw = _small_raw(tmp_path / "raw")
    images = raw / "images"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(images / "A1.jpg", format="JPEG")
    Image.new("L", (16, 16), 90).save(images / "A2.jpg", format="JPEG")
    Image.new("RGBA", (16, 16), (0, 0, 255, 255)).save(images / "A3.jpg", format="PNG")
    Image.fromarray(np.full((16, 16), 51400, np.uint16)).save(images / "A4.jpg", format="PNG")
    configs = build_fashioniq(raw, tmp_path / "out")
    gallery = load_dataset(str(tmp_path / "out"), "dress-gallery", split="validation", cache_dir=str(tmp_path / "c"))
    pixels = {row["image_id"]: (row["image"].mode, row["image"].getpixel((8, 8))) for row in gallery}
    assert all(mode == "RGB" for mode, _ in pixels.values())
    assert pixels["A1"][1][0] > 200 and pixels["A1"][1][1] < 60  # CMYK (0, 255, 255, 0) is red
    assert abs(pixels["A2"][1][0] - 90) < 4 and pixels["A3"][1][2] > 200 and abs(pixels["A4"][1][0] - 200) < 4
    assert configs["dress"]["validation"][0]["reference_image"].mode == "RGB"


def test_image_path_escaping_the_root_is_refused(tmp_path):
    raw = _small_raw(tmp_path / "raw")
    (tmp_path / "secret.jpg").write_bytes(_jpeg())
    escape = [{"candidate": "../../secret", "target": "A2", "captions": ["x", "y"]}]
    (raw / "captions" / "cap.dress.val.json").write_text(json.dumps(escape))
    for on_missing in ("error", "skip"):
        with pytest.raises(UnsafePathError, match=r"'\.\./\.\./secret\.jpg' escapes the image root"):
            build_fashioniq(raw, tmp_path / "out", on_missing=on_missing)


def test_symlink_leaving_the_image_root_is_refused(tmp_path):
    raw = _small_raw(tmp_path / "raw")
    (tmp_path / "secret.jpg").write_bytes(_jpeg())
    (raw / "images" / "A2.jpg").unlink()
    (raw / "images" / "A2.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(UnsafePathError, match="'A2.jpg' escapes the image root"):
        build_fashioniq(raw, tmp_path / "out", on_missing="skip", num_proc=2)


def _bomb_png() -> bytes:
    """A valid 8x8 PNG whose header claims 30000x30000 pixels: what a decompression bomb looks like."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", 30000, 30000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_decompression_bomb_is_refused(tmp_path):
    raw = _small_raw(tmp_path / "raw")
    (raw / "images" / "A3.jpg").write_bytes(_bomb_png())
    with pytest.raises(DataError, match=r"A3\.jpg.*decompression bomb"):
        build_fashioniq(raw, tmp_path / "out")


@pytest.mark.parametrize(
    ("triplets", "error", "message"),
    [
        ('[{"candidate": "A1", "target": "A2", ', SchemaError, "cap.dress.val.json: malformed JSON"),
        ([{"target": "A2", "captions": ["x", "y"]}], SchemaError, "entry 0 has no usable 'candidate'"),
        ([{"candidate": "A1", "target": "A2"}], SchemaError, "entry 0 has no 'captions'"),
        ("", SchemaError, "cap.dress.val.json: the annotation file is empty"),
        ("[]", SchemaError, "cap.dress.val.json: the annotation file holds no triplets"),
    ],
    ids=["malformed-json", "no-candidate", "no-captions", "empty-file", "empty-list"],
)
def test_bad_annotation_files(tmp_path, triplets, error, message):
    raw = _small_raw(tmp_path / "raw", triplets=triplets)
    with pytest.raises(error, match=message):
        build_fashioniq(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_category_and_split(tmp_path):
    raw = _small_raw(tmp_path / "raw")
    with pytest.raises(DataError, match="unknown category 'skirt'; expected one of: dress, shirt, toptee"):
        build_fashioniq(raw, tmp_path / "out", categories=["skirt"])
    with pytest.raises(DataError, match="unknown split 'val'; expected one of: train, validation, test"):
        build_fashioniq(raw, tmp_path / "out", splits=["val"])
    with pytest.raises(DataError, match="annotation file not found: .*cap.dress.train.json"):
        build_fashioniq(raw, tmp_path / "out", splits=["train"])
    with pytest.raises(DataError, match="no caption file for category 'shirt'"):
        build_fashioniq(raw, tmp_path / "out", categories=["shirt"])
    with pytest.raises(DataError, match="unknown on_missing 'ignore'"):
        build_fashioniq(raw, tmp_path / "out", on_missing="ignore")
    with pytest.raises(DataError, match="num_proc must be at least 1, got 0"):
        build_fashioniq(raw, tmp_path / "out", num_proc=0)


def test_cli_builds_and_reports_errors_on_one_line(tmp_path, capsys):
    raw = _small_raw(tmp_path / "raw")
    out = tmp_path / "out"
    argv = ["build", "fashioniq", "--raw-dir", str(raw), "--out", str(out), "--categories", "dress", "--num-proc", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "dress: validation 3" in captured.err
    assert main(argv + ["--categories", "skirt"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: unknown category 'skirt'; expected one of: dress, shirt, toptee"
    )


def test_degenerate_triplets_are_dropped_and_counted(tmp_path, capsys):
    triplets = TRIPLETS + [
        {"candidate": "A1", "target": "A2", "captions": ["is red", " has no sleeves"]},  # an exact repeat
        {"candidate": "A1", "target": "A2", "captions": ["is crimson", "sleeveless"]},  # same pair, new text: kept
        {"candidate": "A4", "target": "A4", "captions": ["same", "same"]},  # target is its reference
    ]
    raw = _small_raw(tmp_path / "raw", triplets=triplets)
    argv = ["build", "fashioniq", "--raw-dir", str(raw), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "note: dress/validation: triplets whose target is their reference (dropped): 1" in err
    assert "note: dress/validation: repeated triplets, same reference, target and captions (dropped): 1" in err
    loaded = load_dataset(str(tmp_path / "out"), "dress", split="validation", cache_dir=str(tmp_path / "cache"))
    assert [(r["reference_id"], r["target_id"], r["captions"]) for r in loaded.select_columns(
        ["reference_id", "target_id", "captions"])] == [
        (t["candidate"], t["target"], t["captions"]) for t in TRIPLETS + [triplets[4]]
    ]
    card = _card_yaml(tmp_path / "out")
    assert card["skipped"] == {
        "dress/validation: triplets whose target is their reference (dropped)": 1,
        "dress/validation: repeated triplets, same reference, target and captions (dropped)": 1,
    }


def test_hidden_targets_are_never_deduplicated(tmp_path):
    twins = [{"candidate": "A1", "captions": ["is red", "x"]}, {"candidate": "A1", "captions": ["is red", "x"]}]
    raw = _small_raw(tmp_path / "raw", triplets=twins, split="test")
    configs = build_fashioniq(raw, tmp_path / "out")
    assert configs["dress"]["test"]["reference_id"] == ["A1", "A1"]


@pytest.mark.parametrize("on_missing", ["error", "skip"])
def test_image_path_with_a_nul_byte_is_one_line(tmp_path, capsys, on_missing):
    raw = _small_raw(tmp_path / "raw", triplets=[{"candidate": "A1\u0000x", "target": "A2", "captions": ["a", "b"]}])
    argv = ["build", "fashioniq", "--raw-dir", str(raw), "--out", str(tmp_path / "out"), "--on-missing", on_missing]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: image path 'A1\\x00x.jpg' holds a NUL byte"
    assert not (tmp_path / "out").exists()


def test_full_disk_during_a_build_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from datasets import Dataset

    raw = _small_raw(tmp_path / "raw")
    out = tmp_path / "out"

    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Dataset, "to_parquet", full_disk)
    assert main(["build", "fashioniq", "--raw-dir", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: writing the dataset to {out} failed: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no half-written folder, no temporary left


def test_card_metadata_validates(tmp_path):
    from card_checks import validate_dataset_card

    raw = _small_raw(tmp_path / "raw")
    build_fashioniq(raw, tmp_path / "out")
    card = validate_dataset_card(tmp_path / "out", num_examples=len(TRIPLETS))
    assert card.data.license == "other" and card.data.license_link == "https://github.com/XiaoxiaoGuo/fashion-iq"
    assert card.data.language == ["en"] and card.data.pretty_name == "Fashion IQ"
    assert "@inproceedings{wu2021fashioniq" in card.text and "garderes2025facap" not in card.text
