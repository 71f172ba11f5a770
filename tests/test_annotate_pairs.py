"""Pair mining from built dataset folders with a tiny random CLIP model (built here) and the tiny
FashionBLIP-2 folder, and the whole pipeline on the synthetic set (stages 1 and 2 against the stub)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from datasets import Dataset, DatasetDict
from PIL import Image

from facap_dataset.annotate import BackendError, DatasetImages, MiningOptions, mine_pairs, read_pairs
from facap_dataset.annotate.stub import StubServer
from facap_dataset.cli import main
from facap_dataset.export import DatasetCardInfo, write_dataset
from facap_dataset.images import encode_jpeg
from facap_dataset.schema import GALLERY_FEATURES
from tiny_clip import save_tiny_clip

BAND = MiningOptions(min_similarity=-1.0, max_similarity=0.999, top_k=5, pairs_per_image=2, max_uses=3, seed=0)


def _gallery_image(index: int) -> bytes:
    image = Image.new("RGB", (32, 32), (37 * index % 256, 91 * index % 256, 53 * index % 256))
    for x in range(0, 32, 2 + index % 5):
        for y in range(32):
            image.putpixel((x, y), (255 - 20 * index % 256, 10 * index % 256, 200))
    return encode_jpeg(image)


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory):
    """A dress gallery of 14 images: img00 and copy-of-img00 are byte-identical, img-broken does not decode."""
    ids = [f"img{i:02d}" for i in range(12)] + ["copy-of-img00", "img-broken"]
    images = [_gallery_image(i) for i in range(12)] + [_gallery_image(0), b"\xff\xd8\xff broken jpeg"]
    rows = {"image_id": ids, "category": ["dress"] * len(ids), "image": [{"bytes": b, "path": None} for b in images]}
    gallery = DatasetDict({"train": Dataset.from_dict(rows, features=GALLERY_FEATURES)})
    card = DatasetCardInfo(pretty_name="annotate test gallery", description="test", source="drawn", license="mit",
                           build_command="tests")
    return write_dataset(tmp_path_factory.mktemp("gallery") / "ds", {"dress-gallery": gallery}, card=card)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_mined_pairs_respect_the_band_the_use_bound_and_skip_bad_images(gallery_dir, tiny_clip_dir):
    source = DatasetImages(gallery_dir, "dress", "train")
    pairs, skipped = mine_pairs(source, str(tiny_clip_dir), BAND, progress=False)
    assert list(skipped) == ["img-broken"] and "cannot be decoded" in skipped["img-broken"]
    assert len(pairs) >= 10
    uses = Counter(image for pair in pairs for image in (pair.candidate, pair.target))
    assert max(uses.values()) <= BAND.max_uses
    assert all(p.candidate != p.target and BAND.min_similarity <= p.similarity <= BAND.max_similarity for p in pairs)
    assert len({(p.candidate, p.target) for p in pairs}) == len(pairs)
    # The byte-identical copy has similarity 1: a near-duplicate, never paired with its original.
    assert not any({p.candidate, p.target} == {"img00", "copy-of-img00"} for p in pairs)
    assert Counter(p.candidate for p in pairs).most_common(1)[0][1] <= BAND.pairs_per_image


def test_mining_is_deterministic_for_a_seed(gallery_dir, tiny_clip_dir):
    source = DatasetImages(gallery_dir, "dress", "train")
    first, _ = mine_pairs(source, str(tiny_clip_dir), BAND, progress=False)
    again, _ = mine_pairs(source, str(tiny_clip_dir), BAND, progress=False)
    other, _ = mine_pairs(source, str(tiny_clip_dir), MiningOptions(**{**BAND.__dict__, "seed": 1}), progress=False)
    assert first == again
    assert first != other


def test_a_tight_band_mines_fewer_pairs(gallery_dir, tiny_clip_dir):
    source = DatasetImages(gallery_dir, "dress", "train")
    wide, _ = mine_pairs(source, str(tiny_clip_dir), BAND, progress=False)
    sims = sorted(p.similarity for p in wide)
    tight = MiningOptions(**{**BAND.__dict__, "min_similarity": sims[len(sims) // 2]})
    narrow, _ = mine_pairs(source, str(tiny_clip_dir), tight, progress=False)
    assert 0 < len(narrow) < len(wide) and all(p.similarity >= tight.min_similarity for p in narrow)


def test_bad_mining_inputs_are_clear_errors(gallery_dir, tiny_clip_dir):
    source = DatasetImages(gallery_dir, "dress", "train")
    with pytest.raises(BackendError, match="cannot load image model 'no-such-org/clip'"):
        mine_pairs(source, "no-such-org/clip", BAND, progress=False)
    with pytest.raises(ValueError, match="min_similarity < max_similarity"):
        MiningOptions(min_similarity=0.9, max_similarity=0.5)
    with pytest.raises(ValueError, match="cannot load config 'skirt-gallery'"):
        DatasetImages(gallery_dir, "skirt", "train")


def test_whole_pipeline_on_the_synthetic_set_with_fashionblip2(tmp_path, synthetic_dir, tiny_model_dir, capsys):
    pairs_file = tmp_path / "pairs.json"
    assert main(["annotate", "pairs", "--dataset", str(synthetic_dir), "--config", "dress", "--split", "validation",
                 "--model", str(tiny_model_dir), "--min-similarity", "-1", "--max-similarity", "0.9999",
                 "--max-uses", "2", "--out", str(pairs_file), "--no-progress"]) == 0
    mined = read_pairs(pairs_file)
    gallery = set(DatasetImages(synthetic_dir, "dress", "validation").ids())
    assert (mined.category, mined.split) == ("dress", "validation") and len(mined.pairs) >= 5
    assert all(p.candidate in gallery and p.target in gallery for p in mined.pairs)

    with StubServer() as server:
        backend = ["--backend", "openai", "--base-url", server.url, "--model", "stub", "--no-progress"]
        assert main(["annotate", "captions", "--dataset", str(synthetic_dir), "--config", "dress",
                     "--pairs", str(pairs_file), "--out", str(tmp_path / "caps"), *backend]) == 0
        assert main(["annotate", "modifications", "--pairs", str(pairs_file), "--captions", str(tmp_path / "caps"),
                     "--out", str(tmp_path / "facap"), *backend]) == 0
    captions = json.loads((tmp_path / "caps" / "image_captions" / "dress_validation_captions.json").read_text())
    assert set(captions) == {image for p in mined.pairs for image in (p.candidate, p.target)}
    triplets = json.loads((tmp_path / "facap" / "cir_triplets" / "dress_validation_triplets.json").read_text())
    assert [(t["candidate"], t["target"]) for t in triplets] == [(p.candidate, p.target) for p in mined.pairs]
    assert "pairs: " in capsys.readouterr().err
