"""`build cirr`: CIRR's raw release read exactly, the fixed schema the CIRR evaluation reads, every bad input."""

from __future__ import annotations

import json

import pytest
from datasets import Features, Image, List, Value, load_dataset

from card_checks import validate_dataset_card
from cirr_release import SET_SIZE, write_cirr_release
from facap_dataset.cirr import build_cirr
from facap_dataset.cli import main
from facap_dataset.errors import DataError, MissingImageError, SchemaError

EXPECTED_TRIPLET_FEATURES = Features(
    {
        "reference_id": Value("string"),
        "target_id": Value("string"),
        "captions": List(Value("string")),
        "category": Value("string"),
        "reference_image": Image(),
        "target_image": Image(),
        "pair_id": Value("int64"),
        "img_set_members": List(Value("string")),
    }
)
EXPECTED_GALLERY_FEATURES = Features({"image_id": Value("string"), "category": Value("string"), "image": Image()})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cirr")
    release = write_cirr_release(root / "raw")
    configs = build_cirr(release.root, root / "out")
    return release, root / "out", configs


def test_schema_splits_and_rows_follow_the_release(built):
    release, out, configs = built
    assert list(configs) == ["cirr", "cirr-gallery"]
    assert list(configs["cirr"]) == ["train", "validation", "test"]
    for split, file_split in (("train", "train"), ("validation", "val"), ("test", "test1")):
        triplets, gallery = configs["cirr"][split], configs["cirr-gallery"][split]
        assert triplets.features == EXPECTED_TRIPLET_FEATURES and gallery.features == EXPECTED_GALLERY_FEATURES
        entries = release.captions[file_split]
        assert triplets["pair_id"] == [e["pairid"] for e in entries]
        assert triplets["reference_id"] == [e["reference"] for e in entries]
        assert triplets["target_id"] == [e.get("target_hard") for e in entries]  # None on test1
        assert triplets["captions"] == [[e["caption"]] for e in entries]
        assert triplets["img_set_members"] == [e["img_set"]["members"] for e in entries]
        assert set(triplets["category"]) == set(gallery["category"]) == {"cirr"}
        assert gallery["image_id"] == list(release.splits[file_split])  # unused images included, in file order
    test = configs["cirr"]["test"]
    assert all(row["target_image"] is None for row in test)
    row = configs["cirr"]["validation"][1]
    for role in ("reference", "target"):  # the pixels of the named PNG (embedded as JPEG)
        pixel = row[f"{role}_image"].getpixel((6, 6))
        assert max(abs(a - b) for a, b in zip(pixel, release.colours[row[f"{role}_id"]])) <= 8


def test_folder_loads_offline_and_the_card_validates(built, tmp_path):
    release, out, _ = built
    cirr = load_dataset(str(out), "cirr", cache_dir=str(tmp_path))
    assert cirr["validation"].features == EXPECTED_TRIPLET_FEATURES
    assert cirr["test"][0]["target_id"] is None and len(cirr["validation"][0]["img_set_members"]) == SET_SIZE
    gallery = load_dataset(str(out), "cirr-gallery", split="validation", cache_dir=str(tmp_path))
    assert len(gallery) == len(release.splits["val"])
    card = validate_dataset_card(out, num_examples=sum(len(e) for e in release.captions.values()))
    assert card.data.pretty_name == "CIRR" and card.data.license_name == "cirr-annotations-nlvr2-images"
    assert "@inproceedings{liu2021cirr" in card.text and "NLVR2" in card.text
    assert "(R@5 + R_subset@1) / 2" in card.text


def test_cli_and_images_dir_elsewhere(tmp_path, capsys):
    release = write_cirr_release(tmp_path / "raw", splits=("val",))
    images = tmp_path / "nlvr2"
    (release.root / "dev").rename(tmp_path / "dev")
    images.mkdir()
    (tmp_path / "dev").rename(images / "dev")
    out = tmp_path / "out"
    argv = ["build", "cirr", "--raw-dir", str(release.root), "--images-dir", str(images), "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "cirr: validation 4" in captured.err
    assert f"--images-dir {images}" in (out / "README.md").read_text()
    assert main(["build", "cirr", "--raw-dir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"error: not a CIRR release: no caption file cap.rc2.<split>.json in {tmp_path / 'captions'}"


def test_caption_naming_an_image_absent_from_the_split_file(tmp_path, capsys):
    release = write_cirr_release(tmp_path / "raw", splits=("val",))
    release.captions["val"][2]["target_hard"] = "dev-nowhere-img9"
    release.rewrite()
    with pytest.raises(DataError, match=r"cap.rc2.val.json: pair 2 names image 'dev-nowhere-img9' \(target_hard\), "
                                        r"absent from .*split.rc2.val.json \(pass --on-missing skip"):
        build_cirr(release.root, tmp_path / "out")
    configs = build_cirr(release.root, tmp_path / "out", on_missing="skip")
    assert configs["cirr"]["validation"]["pair_id"] == [0, 1, 3]
    assert "note: cirr/validation: pairs naming an image absent from the split file (dropped): 1" in capsys.readouterr().err
    card = validate_dataset_card(tmp_path / "out")
    assert card.data.skipped == {"cirr/validation: pairs naming an image absent from the split file (dropped)": 1}


def test_repeated_pairid_and_reference_outside_its_set_are_errors(tmp_path):
    release = write_cirr_release(tmp_path / "raw", splits=("val",))
    release.captions["val"][3]["pairid"] = 1
    release.rewrite()
    with pytest.raises(DataError, match=r"cap.rc2.val.json: pairid 1 is repeated \(entries 1 and 3\)"):
        build_cirr(release.root, None, on_missing="skip")
    release.captions["val"][3]["pairid"] = 3
    release.captions["val"][0]["img_set"]["members"] = release.captions["val"][1]["img_set"]["members"]
    release.rewrite()
    with pytest.raises(DataError, match=r"pair 0: its img_set 0 does not hold its reference 'dev-0-0-img0'"):
        build_cirr(release.root, None)


def test_missing_and_corrupt_images_as_in_the_other_builders(tmp_path):
    release = write_cirr_release(tmp_path / "raw", splits=("val",))
    (release.root / release.splits["val"]["dev-1-1-img0"]).unlink()  # pair 1's reference
    (release.root / release.splits["val"]["dev-unused-0-img0"]).write_bytes(b"not a png")
    with pytest.raises(MissingImageError, match="1 image.s. missing: .*dev-1-1-img0.png"):
        build_cirr(release.root, None)
    configs = build_cirr(release.root, None, on_missing="skip")
    assert configs["cirr"]["validation"]["pair_id"] == [0, 2, 3]
    assert "dev-1-1-img0" not in configs["cirr-gallery"]["validation"]["image_id"]
    assert "dev-unused-0-img0" not in configs["cirr-gallery"]["validation"]["image_id"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.update(pairid="7"), r"entry 0 has no usable 'pairid' \(an integer\): '7'"),
        (lambda e: e.pop("reference"), r"entry 0 has no usable 'reference' \(an image name\): missing"),
        (lambda e: e.pop("target_hard"), r"entry 0 has no usable 'target_hard'"),
        (lambda e: e.update(caption=None), r"entry 0 \(pair 0\) has no 'caption' string"),
        (lambda e: e["img_set"].update(members="dev-0"), r"pair 0: img_set 'members' must be a non-empty list"),
    ],
    ids=["pairid-string", "no-reference", "no-target", "no-caption", "members-not-a-list"],
)
def test_malformed_caption_entries(tmp_path, edit, message):
    release = write_cirr_release(tmp_path / "raw", splits=("val",))
    edit(release.captions["val"][0])
    release.rewrite()
    with pytest.raises(SchemaError, match=message):
        build_cirr(release.root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_split_file_must_map_names_to_paths(tmp_path):
    release = write_cirr_release(tmp_path / "raw", splits=("val",))
    release.split_path("val").write_text(json.dumps(list(release.splits["val"])))
    with pytest.raises(SchemaError, match="split.rc2.val.json: expected a JSON object mapping image names to paths"):
        build_cirr(release.root, None)


@pytest.mark.parametrize(("path", "message"), [("../outside.png", "escapes the image root"),
                                               ("./dev/a\u0000.png", "holds a NUL byte")])
def test_split_file_paths_stay_inside_the_image_root(tmp_path, capsys, path, message):
    release = write_cirr_release(tmp_path / "raw", splits=("val",))
    (tmp_path / "outside.png").write_bytes((release.root / release.splits["val"]["dev-0-0-img0"]).read_bytes())
    release.splits["val"]["dev-0-0-img0"] = path
    release.rewrite()
    argv = ["build", "cirr", "--raw-dir", str(release.root), "--out", str(tmp_path / "out"), "--on-missing", "skip"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: image path ") and message in err[-1]
    assert not (tmp_path / "out").exists()
