"""Shared fixtures. One section per area; fixtures are session-scoped where building them costs time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------- [coordinator]
# No hub downloads on these machines; anything that tries must fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Files that live beside the repository, not in it: CI has them, a user's fresh clone does not.
FASHIONIQ_RAW = REPO_ROOT.parent / "shared" / "data" / "fashioniq"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_outside_file(path: Path, what: str) -> Path:
    """`path` when it exists; else skip with the reason, or fail under CI=true (CI has these files)."""
    if path.exists():
        return path
    message = f"{what} not found at {path} (outside the repository; CI provides it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def fashioniq_annotations() -> Path:
    """The real Fashion IQ annotation files (captions/ and image_splits/), read-only."""
    return require_outside_file(FASHIONIQ_RAW / "captions", "the real Fashion IQ annotation files").parent


# ------------------------------------------------------------------------------------------------ [synthetic]
# 300 drawn images at 32 px: per category 27 train / 4 validation / 2 test triplets, validation galleries
# of 28 images with distractors and near-copies; builds in about a second.
SYNTHETIC_FIXTURE_OPTIONS = {"num_images": 300, "seed": 0, "image_size": 32}


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small built synthetic dataset folder (configs dress/shirt/toptee + galleries, all three splits)."""
    from facap_dataset.synthetic import build_synthetic

    return build_synthetic(tmp_path_factory.mktemp("synthetic") / "dataset", **SYNTHETIC_FIXTURE_OPTIONS)


@pytest.fixture(scope="session")
def synthetic_negatives_dir(tmp_path_factory) -> Path:
    """`synthetic_dir`'s dataset built with `hard_negatives=True` (a `negative_image` column in every split)."""
    from facap_dataset.synthetic import build_synthetic

    return build_synthetic(tmp_path_factory.mktemp("synthetic") / "negatives", hard_negatives=True,
                           **SYNTHETIC_FIXTURE_OPTIONS)


# -------------------------------------------------------------------------------------------------- [model]
# Words the tiny processor's vocabulary holds whole (others are spelt out in character pieces by WordPiece):
# colours, garments, attributes and the glue of Fashion IQ / FACap style modification texts.
MODEL_TEST_WORDS = """
red orange yellow green teal blue navy purple pink brown grey gray black white beige cream gold silver maroon
scarlet violet dark light bright pale pastel neon colour color colours colors colourful colorful multicolored
dress gown shirt blouse top tee tshirt t shirt toptee skirt pants jeans jacket coat sweater cardigan hoodie
outfit tank camisole tunic romper jumpsuit vest polo
solid plain striped stripes stripe dotted dots dot polka checked checks checkered plaid floral flowers flower
flowery print printed pattern patterned graphic logo text lace sequins denim cotton silk leather
sleeve sleeves sleeveless sleeved long short full half cap three quarter length knee midi mini maxi floor hem
hemline cropped hip regular tunic neck neckline collar round crew v square high turtleneck scoop boat halter
strapless straps strap button buttons zipper pocket pockets belt bow ruffles hood
is are be has have with without and or but not no the a an this that these it its same more less much
longer shorter looser tighter darker lighter brighter simpler fancier larger smaller wider narrower
fitted loose tight casual formal elegant sexy cute simple fancy modern vintage classic sporty
instead of in to on at for from than like would should make give change want i me my
""".split()


@pytest.fixture(scope="session")
def tiny_processor():
    """A FashionBlip2Processor for 32 px images whose WordPiece vocabulary covers the synthetic captions."""
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Processor

    config = FashionBlip2Config.from_preset("tiny")
    return FashionBlip2Processor.from_texts(
        [" ".join(MODEL_TEST_WORDS)],
        image_size=config.vision_config.image_size,
        max_text_length=config.max_text_length,
        vocab_size=config.qformer_config.vocab_size,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_processor):
    """A save_pretrained folder (model + processor + remote code) of a random `tiny`-preset FashionBlip2Model."""
    import torch

    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model

    torch.manual_seed(0)
    model = FashionBlip2Model(FashionBlip2Config.from_preset("tiny"))
    folder = tmp_path_factory.mktemp("tiny_fashionblip2")
    model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_blip2_config():
    """A tiny transformers Blip2Config for a Blip2ForImageTextRetrieval: the `tiny` preset's vision tower and
    Q-Former (one source for those sizes), with text input on."""
    from transformers import Blip2Config

    from modeling_fashionblip2.configuration_fashionblip2 import PRESETS

    tiny = PRESETS["tiny"]
    return Blip2Config(
        vision_config=dict(tiny["vision_config"]),
        qformer_config={**tiny["qformer_config"], "use_qformer_text_input": True},
        text_config={"model_type": "opt", "hidden_size": 16, "num_hidden_layers": 1, "ffn_dim": 32,
                     "num_attention_heads": 2, "vocab_size": 100, "word_embed_proj_dim": 16},
        num_query_tokens=tiny["num_query_tokens"],
        image_text_hidden_size=tiny["image_text_hidden_size"],
    )
