"""The synthetic catalogue: real properties of the generated data, determinism, loading, bad input."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from facap_dataset.cli import main
from facap_dataset.errors import DataError
from facap_dataset.export import read_card_data
from facap_dataset.schema import FASHIONIQ_CATEGORIES, SPLITS, gallery_config
from facap_dataset.synthetic import (
    DEFAULT_NUM_IMAGES,
    NUM_DISTRACTORS,
    NUM_NEAR_COPIES,
    PRETTY_NAME,
    SYNTHETIC_GALLERY_FEATURES,
    SYNTHETIC_TRIPLET_FEATURES,
    SYNTHETIC_VOCABULARY,
    build_synthetic,
    generate_synthetic,
    minimum_num_images,
    triplet_counts,
)
from facap_dataset.synthetic_attributes import ATTRIBUTE_NAMES, ATTRIBUTES, COLOURS, changed_attributes
from facap_dataset.synthetic_oracle import oracle_recall
from facap_dataset.synthetic_text import parse_text


def _rows(directory, config, split):
    files = sorted((directory / config).glob(f"{split}-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def _all_rows(directory):
    return {
        (config, split): _rows(directory, config, split)
        for category in FASHIONIQ_CATEGORIES
        for config in (category, gallery_config(category))
        for split in SPLITS
    }


@pytest.fixture(scope="module")
def rows(synthetic_dir):
    return _all_rows(synthetic_dir)


def test_attribute_space_is_rich_enough():
    assert len(COLOURS) >= 10 and len(ATTRIBUTES["pattern"]) >= 4
    assert {"colour", "pattern", "sleeve", "length", "neckline"} <= set(ATTRIBUTE_NAMES)


def test_loads_offline_with_exact_features(synthetic_dir, tmp_path):
    cache = str(tmp_path / "cache")
    dress = load_dataset(str(synthetic_dir), "dress", cache_dir=cache)
    assert set(dress) == set(SPLITS)
    assert dress["validation"].features == SYNTHETIC_TRIPLET_FEATURES
    assert dress["validation"].num_rows == triplet_counts(300)["dress"]["validation"]
    gallery = load_dataset(str(synthetic_dir), "shirt-gallery", split="validation", cache_dir=cache)
    assert gallery.features == SYNTHETIC_GALLERY_FEATURES
    streamed = next(iter(load_dataset(str(synthetic_dir), "toptee", split="train", streaming=True)))
    assert streamed["reference_image"].size == (32, 32) and streamed["target_image"].mode == "RGB"
    assert streamed["category"] == "toptee"


def test_text_names_exactly_the_attribute_difference(rows):
    styles = set()
    for (config, _), table in rows.items():
        if config.endswith("-gallery"):
            continue
        for row in table:
            reference, target = json.loads(row["reference_attributes"]), json.loads(row["target_attributes"])
            changed = changed_attributes(reference, target)
            assert 1 <= len(changed) <= 3
            assert parse_text(row["captions"]) == {name: target[name] for name in changed}, row["captions"]
            assert len(row["captions"]) == {"fashioniq": 2, "facap": 1}[row["style"]]
            if row["style"] == "fashioniq" and len(changed) == 1:  # two annotators, two phrasings
                assert row["captions"][0] != row["captions"][1]
            styles.add(row["style"])
            assert row["category"] == config
    assert styles == {"fashioniq", "facap"}


def test_captions_vary_and_stay_in_the_vocabulary(rows):
    captions = [c for (config, _), table in rows.items() if not config.endswith("-gallery")
                for row in table for c in row["captions"]]
    tokens = {t for c in captions for t in re.findall(r"[a-z]+|[.,]", c.lower())}
    assert tokens <= set(SYNTHETIC_VOCABULARY)
    assert all(w == w.lower() for w in SYNTHETIC_VOCABULARY)
    colour_phrasings = {re.sub(r"\b(" + "|".join(COLOURS) + r")\b", "<c>", c) for c in captions if " colour" in c
                        or c.startswith("is ")}
    assert len(colour_phrasings) > 5  # templates and synonyms, not one fixed code
    assert len(set(captions)) > 0.5 * len(captions)


def test_splits_are_disjoint_and_no_two_images_coincide(rows):
    for category in FASHIONIQ_CATEGORIES:
        ids = [{r["image_id"] for r in rows[(gallery_config(category), split)]} for split in SPLITS]
        assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    digests = [hashlib.sha256(r["image"]["bytes"]).hexdigest()
               for (config, _), table in rows.items() if config.endswith("-gallery") for r in table]
    assert len(digests) == len(set(digests))


def test_galleries_hold_references_and_targets_with_their_attributes(rows):
    for category in FASHIONIQ_CATEGORIES:
        for split in SPLITS:
            gallery = {r["image_id"]: r for r in rows[(gallery_config(category), split)]}
            for row in rows[(category, split)]:
                for role in ("reference", "target"):
                    image = gallery[row[f"{role}_id"]]
                    assert image["image"]["bytes"] == row[f"{role}_image"]["bytes"]
                    assert image["attributes"] == row[f"{role}_attributes"]


def test_validation_and_test_galleries_need_composition(rows):
    for category in FASHIONIQ_CATEGORIES:
        for split in ("validation", "test"):
            gallery = [(r["image_id"], json.loads(r["attributes"])) for r in rows[(gallery_config(category), split)]]
            for row in rows[(category, split)]:
                reference, target = json.loads(row["reference_attributes"]), json.loads(row["target_attributes"])
                changed = changed_attributes(reference, target)
                unchanged = [a for a in ATTRIBUTE_NAMES if a not in changed]
                distractors = [i for i, a in gallery if i != row["target_id"]
                               and all(a[n] == target[n] for n in changed)
                               and any(a[n] != reference[n] for n in unchanged)]
                near_copies = [i for i, a in gallery if i != row["reference_id"]
                               and all(a[n] == reference[n] for n in unchanged)
                               and not all(a[n] == target[n] for n in changed)]
                assert len(distractors) >= NUM_DISTRACTORS and len(near_copies) >= NUM_NEAR_COPIES


def test_default_build_meets_the_gallery_and_oracle_targets():
    counts = triplet_counts(DEFAULT_NUM_IMAGES)
    configs = generate_synthetic(image_size=16)  # default counts; tiny images keep the test fast
    for category in FASHIONIQ_CATEGORIES:
        gallery = configs[gallery_config(category)]["validation"]
        assert gallery.num_rows >= 500
        triplets = configs[category]["validation"]
        assert triplets.num_rows == counts[category]["validation"]
        queries = [(c, json.loads(r), t) for c, r, t in
                   zip(triplets["captions"], triplets["reference_attributes"], triplets["target_id"])]
        by_id = dict(zip(gallery["image_id"], map(json.loads, gallery["attributes"])))
        text = oracle_recall("text", queries, by_id)["recall@1"]
        composed = oracle_recall("composed", queries, by_id)["recall@1"]
        assert text < 25.0 and composed > 80.0, (category, text, composed)


def test_deterministic_for_a_seed(tmp_path, rows):
    first = build_synthetic(tmp_path / "a", num_images=300, seed=0, image_size=32)
    assert _all_rows(first) == rows  # the conftest fixture used the same options
    other = generate_synthetic(num_images=300, seed=1, image_size=32)
    assert other["dress"]["validation"]["captions"] != [r["captions"] for r in rows[("dress", "validation")]]


def test_too_few_images(tmp_path, capsys):
    minimum = minimum_num_images()
    assert all(n >= 1 for counts in triplet_counts(minimum).values() for n in counts.values())
    with pytest.raises(DataError, match=f"--num-images {minimum - 1} is too small.*at least {minimum}"):
        build_synthetic(tmp_path / "out", num_images=minimum - 1)
    assert main(["build", "synthetic", "--out", str(tmp_path / "out"), "--num-images", "10"]) == 2
    assert capsys.readouterr().err.startswith("error: --num-images 10 is too small")
    assert not (tmp_path / "out").exists()


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["build", "synthetic", "--out", str(blocker / "ds"), "--num-images", "150"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_out_holding_a_different_dataset(tmp_path, capsys, synthetic_dir):
    out = tmp_path / "ds"
    (out / "dress").mkdir(parents=True)
    card = (synthetic_dir / "README.md").read_text().replace(PRETTY_NAME, "Fashion IQ")
    (out / "README.md").write_text(card)
    args = ["build", "synthetic", "--out", str(out), "--num-images", "150", "--image-size", "16"]
    assert main(args) == 2
    assert "holds a different dataset ('Fashion IQ'" in capsys.readouterr().err
    assert read_card_data(out).pretty_name == "Fashion IQ"

    assert main([*args, "--overwrite"]) == 0
    assert read_card_data(out).pretty_name == PRETTY_NAME
    assert "--num-images 150" in (out / "README.md").read_text()
    assert main(args) == 0  # rebuilding the same dataset in place needs no --overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_train_triplets_grows_train_only(tmp_path, rows, capsys):
    out = tmp_path / "ds"
    args = ["build", "synthetic", "--out", str(out), "--num-images", "300", "--image-size", "32"]
    assert main([*args, "--train-triplets", "40"]) == 0
    assert "train 40 triplets" in capsys.readouterr().out
    grown = _all_rows(out)
    for category in FASHIONIQ_CATEGORIES:
        train = grown[(category, "train")]
        assert len(train) == 40 > len(rows[(category, "train")])
        assert len(grown[(gallery_config(category), "train")]) == 2 * 40
        assert len({r["captions"][0] + r["reference_attributes"] for r in train}) > 30  # fresh draws, not repeats
        for split in ("validation", "test"):  # each split has its own random stream: evaluation is untouched
            for config in (category, gallery_config(category)):
                assert grown[(config, split)] == rows[(config, split)]
    assert "--train-triplets 40" in (out / "README.md").read_text()


def test_hard_negatives_add_a_column_and_change_nothing_else(synthetic_negatives_dir, rows):
    with_negatives = _all_rows(synthetic_negatives_dir)
    for category in FASHIONIQ_CATEGORIES:
        assert with_negatives[(gallery_config(category), "train")] == rows[(gallery_config(category), "train")]
        for split in SPLITS:
            plain, triplets = rows[(category, split)], with_negatives[(category, split)]
            assert [{k: v for k, v in r.items() if not k.startswith("negative_")} for r in triplets] == plain
            gallery = {r["image"]["bytes"]: r["attributes"] for r in rows[(gallery_config(category), split)]}
            for row in triplets:
                reference, target = json.loads(row["reference_attributes"]), json.loads(row["target_attributes"])
                negative = json.loads(row["negative_attributes"])
                changed = set(changed_attributes(reference, target))
                is_distractor = (all(negative[n] == target[n] for n in changed)
                                 and 1 <= len(changed_attributes(target, negative)) <= 2)
                is_near_copy = (all(negative[n] == reference[n] for n in set(ATTRIBUTE_NAMES) - changed)
                                and set(changed_attributes(reference, negative)) < changed)
                assert is_distractor != is_near_copy, row  # exactly one kind, and never the target itself
                image = row["negative_image"]["bytes"]
                # validation/test negatives are the triplet's own gallery images; train ones are drawn afresh
                assert (gallery.get(image) == row["negative_attributes"]) == (split != "train")
    card = (synthetic_negatives_dir / "README.md").read_text()
    assert "--hard-negatives" in card and "negative_image" in card


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--image-size", "8", "outside"), ("--seed", "-1", "non-negative"), ("--train-triplets", "0", "at least 1")],
)
def test_bad_options(tmp_path, capsys, option, value, message):
    assert main(["build", "synthetic", "--out", str(tmp_path / "ds"), option, value]) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ stand-ins

def _column_digest(folder) -> str:
    """SHA-256 of every non-image column but `num_changes`, shard by shard (images depend on the JPEG library)."""
    digest = hashlib.sha256()
    for shard in sorted(folder.rglob("*.parquet")):
        table = pq.read_table(shard)
        digest.update(shard.relative_to(folder).as_posix().encode())
        for name in table.column_names:
            if name != "num_changes" and "image" not in name:
                digest.update(name.encode())
                digest.update(repr(table.column(name).to_pylist()).encode())
    return digest.hexdigest()


def test_default_catalogue_is_unchanged_and_counts_changes(synthetic_dir, rows):
    # recorded from the catalogue before stand-ins and `num_changes` existed (same options as the fixture)
    assert _column_digest(synthetic_dir) == "cc3b09943ce433d7a4649da2f8c12d1b32ceffd77ddf891d4ec19509227489b7"
    for (config, _), table in rows.items():
        for row in table if not config.endswith("-gallery") else ():
            changed = changed_attributes(json.loads(row["reference_attributes"]), json.loads(row["target_attributes"]))
            assert row["num_changes"] == len(changed)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {style: build_synthetic(root / style, num_images=300, image_size=16, style=style)
            for style in ("facap", "fashioniq", "enhfashioniq")}


def _triplets(folder, split):
    return {c: _rows(folder, c, split) for c in FASHIONIQ_CATEGORIES}


def test_standin_splits_cards_and_num_changes(standins):
    from card_checks import validate_dataset_card

    expected = {"facap": ["train", "validation"], "fashioniq": ["train", "validation"], "enhfashioniq": ["validation"]}
    for style, folder in standins.items():
        card = validate_dataset_card(folder)
        assert "**Synthetic data**" in card.text and "synthetic" in card.data.tags
        assert f"stands in for **{ {'facap': 'FACap', 'fashioniq': 'Fashion IQ', 'enhfashioniq': 'enhFashionIQ'}[style]}**" in card.text
        assert f"--style {style}" in card.text
        infos = {info["config_name"]: [s["name"] for s in info["splits"]] for info in card.data.dataset_info}
        assert infos == {c: expected[style] for cat in FASHIONIQ_CATEGORIES for c in (cat, gallery_config(cat))}
        for split in expected[style]:
            for table in _triplets(folder, split).values():
                for row in table:
                    changed = changed_attributes(json.loads(row["reference_attributes"]),
                                                 json.loads(row["target_attributes"]))
                    assert row["num_changes"] == len(changed) >= 1


def test_facap_standin_names_every_change_with_its_own_images(standins):
    facap_ids, facap_images = set(), set()
    for split in ("train", "validation"):
        for table in _triplets(standins["facap"], split).values():
            for row in table:
                reference, target = json.loads(row["reference_attributes"]), json.loads(row["target_attributes"])
                assert len(row["captions"]) == 1 and row["style"] == "facap"
                assert parse_text(row["captions"]) == {a: target[a] for a in changed_attributes(reference, target)}
                facap_ids |= {row["reference_id"], row["target_id"]}
                facap_images.add(hashlib.sha256(row["reference_image"]["bytes"]).hexdigest())
    fiq_images = {hashlib.sha256(row["reference_image"]["bytes"]).hexdigest()
                  for split in ("train", "validation") for table in _triplets(standins["fashioniq"], split).values()
                  for row in table}
    assert all(i.startswith("synfacap-") for i in facap_ids) and not facap_images & fiq_images


def test_fashioniq_standin_is_short_colloquial_and_often_partial(standins):
    rows = [r for split in ("train", "validation") for t in _triplets(standins["fashioniq"], split).values() for r in t]
    assert all(len(r["captions"]) == 2 and all(c.strip() for c in r["captions"]) for r in rows)
    assert {r["style"] for r in rows} == {"colloquial"}
    words = [len(c.split()) for r in rows for c in r["captions"]]
    facap_words = [len(r["captions"][0].split()) for t in _triplets(standins["facap"], "train").values() for r in t]
    assert np.mean(words) < 0.5 * np.mean(facap_words)
    assert sum(r["captions"][0] == r["captions"][1] for r in rows) < 0.1 * len(rows)


def test_colloquial_plan_leaves_changes_out_and_repeats_some():
    from facap_dataset.synthetic_text import PARTIAL_SHARE, colloquial_plan

    rng = np.random.default_rng(0)
    partial = repeated = multi = 0
    for _ in range(2000):
        changes = list(rng.choice(ATTRIBUTE_NAMES, size=int(rng.integers(1, 4)), replace=False))
        first, second = colloquial_plan(changes, rng)
        named = set(first) | set(second)
        assert first and second and named <= set(changes) and len(changes) - len(named) <= 1
        if len(changes) >= 2:
            multi += 1
            partial += named != set(changes)
            repeated += bool(set(first) & set(second)) and len(named) > 1
    assert abs(partial / multi - PARTIAL_SHARE) < 0.05 and repeated > 0.1 * multi


def test_enhfashioniq_standin_is_the_fashioniq_validation_with_detailed_texts(standins):
    fiq, enh = _triplets(standins["fashioniq"], "validation"), _triplets(standins["enhfashioniq"], "validation")
    keys = ["reference_id", "target_id", "reference_attributes", "target_attributes", "num_changes"]
    for category in FASHIONIQ_CATEGORIES:
        assert [[r[k] for k in keys] for r in enh[category]] == [[r[k] for k in keys] for r in fiq[category]]
        assert [r["target_image"] for r in enh[category]] == [r["target_image"] for r in fiq[category]]
        for row in enh[category]:
            reference, target = json.loads(row["reference_attributes"]), json.loads(row["target_attributes"])
            assert len(row["captions"]) == 1 and row["style"] == "facap"
            assert parse_text(row["captions"]) == {a: target[a] for a in changed_attributes(reference, target)}
        gallery = gallery_config(category)
        assert _rows(standins["enhfashioniq"], gallery, "validation") == _rows(standins["fashioniq"], gallery,
                                                                                 "validation")


def test_standin_cli_and_bad_style(tmp_path, capsys):
    out = tmp_path / "fiq"
    assert main(["build", "synthetic", "--style", "fashioniq", "--out", str(out), "--num-images", "300",
                 "--image-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "dress: train" in printed and "validation" in printed and "test" not in printed.split("\n", 1)[1]
    assert read_card_data(out).pretty_name == "Synthetic Fashion IQ stand-in"
    with pytest.raises(DataError, match="--style 'cirr' is unknown; expected one of: mixed, facap, fashioniq"):
        generate_synthetic(num_images=300, style="cirr")
    with pytest.raises(SystemExit):
        main(["build", "synthetic", "--style", "nope", "--out", str(out)])
