"""The synthetic fashion catalogue (DESIGN.md 3.3): `python -m facap_dataset build synthetic --out DIR`.

Per category (dress, shirt, toptee) and split, triplets whose target differs from the reference in 1-3
attributes, with captions written from that difference (see `synthetic_text`). The validation and test
galleries are built so that the task needs composition: for every triplet they hold, besides its
reference and target,
- `NUM_DISTRACTORS` distractors that have every value the text names but differ from the reference in
  one or two attributes the text does not mention (text alone cannot tell them from the target), and
- `NUM_NEAR_COPIES` near-copies of the reference that lack the requested change, wholly or partly
  (the image alone cannot tell them from the target).
Every image has its own pose, background and shade, so no two images coincide; image ids are assigned
after shuffling, so neither ids nor row order reveal an image's role. The train gallery holds the train
split's references and targets. Test targets are visible (the set is synthetic).

Extra columns: triplets have `reference_attributes`, `target_attributes` (JSON), `style` (the text writer:
"fashioniq", "facap" or "colloquial") and `num_changes` (how many attributes changed, whatever the text
names); galleries have `attributes` (JSON). With `hard_negatives`, triplets also have
`negative_image` (schema.NEGATIVE_IMAGE_COLUMN) and `negative_attributes`: in train a freshly drawn
distractor or near-copy (not a gallery image), in validation and test one of the triplet's own gallery
distractors or near-copies. The negatives draw from their own random stream, so every other column is the
same with or without them.

Stand-ins (`style`, one command each, for experiments that need the three datasets of the FACap paper):
- "mixed" (the default, what `make demo` uses): the catalogue above, both text styles mixed;
- "facap": a FACap-like training set: train/validation, one detailed sentence per triplet naming every
  change, its own random streams (so its own images);
- "fashioniq": a Fashion IQ-like set: train/validation, two short colloquial captions per triplet that often
  name only part of the change (`synthetic_text.write_colloquial`);
- "enhfashioniq": an enhFashionIQ-like validation set: exactly the Fashion IQ-like validation triplets and
  galleries (same options, same seed) with FACap-style texts that name every change.
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image, Value

from . import citations
from .errors import DataError
from .export import DatasetCardInfo, check_destination, write_dataset
from .images import encode_jpeg
from .schema import GALLERY_FEATURES, NEGATIVE_IMAGE_COLUMN, SPLITS, gallery_config, triplet_features
from .synthetic_attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    CATEGORIES,
    Attributes,
    changed_attributes,
    from_json,
    to_json,
)
from .synthetic_draw import Pose, draw_garment
from .synthetic_oracle import ORACLES, oracle_recall
from .synthetic_text import COLLOQUIAL, STYLES, SYNTHETIC_VOCABULARY, write_colloquial, write_text

__all__ = ["SYNTHETIC_VOCABULARY", "SYNTHETIC_TRIPLET_FEATURES", "SYNTHETIC_GALLERY_FEATURES", "build_synthetic",
           "generate_synthetic", "add_parser"]

PRETTY_NAME = "FACap synthetic fashion catalogue"
DEFAULT_NUM_IMAGES = 6000
DEFAULT_IMAGE_SIZE = 64
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024
NUM_DISTRACTORS = 3
NUM_NEAR_COPIES = 2
MAX_CHANGES = 3
DISTRACTOR_SHARE = 0.6  # of the drawn train hard negatives; the rest are near-copies
JPEG_QUALITY = 95
# share of each category's image budget per split; validation/test triplets cost more images (galleries)
SPLIT_SHARES = {"train": 0.55, "validation": 0.30, "test": 0.15}
_IMAGES_PER_TRIPLET = {"train": 2, "validation": 2 + NUM_DISTRACTORS + NUM_NEAR_COPIES,
                       "test": 2 + NUM_DISTRACTORS + NUM_NEAR_COPIES}

SYNTHETIC_TRIPLET_FEATURES = triplet_features(
    {"reference_attributes": Value("string"), "target_attributes": Value("string"), "style": Value("string"),
     "num_changes": Value("int64")}
)
SYNTHETIC_GALLERY_FEATURES = Features({**GALLERY_FEATURES, "attributes": Value("string")})
SYNTHETIC_NEGATIVE_FEATURES = Features({**SYNTHETIC_TRIPLET_FEATURES,
                                        NEGATIVE_IMAGE_COLUMN: Image(),
                                        "negative_attributes": Value("string")})


DEFAULT_STYLE = "mixed"


@dataclass(frozen=True)
class Standin:
    """A synthetic stand-in for one of the paper's datasets: which splits, which text writer, which streams."""

    pretty_name: str
    stands_for: str  # Markdown: what it imitates and how
    splits: tuple[str, ...]
    writer: str  # "facap" (one detailed sentence) or "colloquial" (two short captions)
    id_prefix: str
    structure_salt: int  # random stream of images and triplets: equal salts give equal triplets and galleries
    text_salt: int
    sources: tuple[str, ...]  # BibTeX of the datasets it imitates


STANDINS = {
    "facap": Standin(
        "Synthetic FACap stand-in",
        "It stands in for **FACap** (the large pretraining set with detailed modification texts): one detailed "
        "sentence per triplet that names every changed attribute, train and validation splits, and images drawn "
        "from random streams of its own (no image is shared with the other stand-ins).",
        ("train", "validation"), "facap", "synfacap", 1, 1, (citations.FACAP,),
    ),
    "fashioniq": Standin(
        "Synthetic Fashion IQ stand-in",
        "It stands in for **Fashion IQ**: two short relative captions per triplet written the way people write "
        "them: fragments and comparatives (\"more red\", \"stripey\", \"longer\"), often naming only part of "
        "the change (one changed attribute unmentioned), sometimes repeating it, now and then a remark that names "
        "nothing (\"looks nicer\"). Train and validation splits.",
        ("train", "validation"), COLLOQUIAL, "synfiq", 2, 2, (citations.FASHIONIQ,),
    ),
    "enhfashioniq": Standin(
        "Synthetic enhFashionIQ stand-in",
        "It stands in for **enhFashionIQ**: exactly the validation triplets, images and galleries of the "
        "synthetic Fashion IQ stand-in built with the same options and seed, with the short captions replaced "
        "by one detailed FACap-style sentence that names every changed attribute.",
        ("validation",), "facap", "synfiq", 2, 3, (citations.FACAP, citations.FASHIONIQ),
    ),
}
STYLE_CHOICES = (DEFAULT_STYLE, *STANDINS)


@dataclass
class _Image:
    attributes: Attributes
    pose: Pose
    image_id: str = ""


@dataclass
class _Triplet:
    reference: _Image
    target: _Image
    captions: list[str]
    style: str
    gallery_negatives: list[_Image] = field(default_factory=list)  # its distractors and near-copies
    negative: _Image | None = None  # the `negative_image` column, when asked for


@dataclass
class _Split:
    triplets: list[_Triplet] = field(default_factory=list)
    gallery: list[_Image] = field(default_factory=list)


def triplet_counts(num_images: int, train_triplets: int | None = None) -> dict[str, dict[str, int]]:
    """category -> split -> number of triplets for a total budget of `num_images` drawn images; `train_triplets`
    (per category) replaces the train split's share of the budget, leaving validation and test as they are."""
    counts = {}
    for index, category in enumerate(CATEGORIES):
        budget = num_images // len(CATEGORIES) + (index < num_images % len(CATEGORIES))
        counts[category] = {s: int(budget * SPLIT_SHARES[s]) // _IMAGES_PER_TRIPLET[s] for s in SPLITS}
        if train_triplets is not None:
            counts[category]["train"] = train_triplets
    return counts


def minimum_num_images() -> int:
    """The smallest budget that gives every category at least one triplet in every split."""
    n = 1
    while min(c for split_counts in triplet_counts(n).values() for c in split_counts.values()) < 1:
        n += 1
    return n


def generate_synthetic(
    *,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    train_triplets: int | None = None,
    hard_negatives: bool = False,
    style: str = DEFAULT_STYLE,
) -> dict[str, DatasetDict]:
    """The configs (`dress`, ..., `dress-gallery`, ...) as in-memory DatasetDicts; deterministic per seed.
    Each split draws from its own random stream, so `train_triplets` leaves validation and test unchanged;
    `hard_negatives` adds the `negative_image` column and changes nothing else. `style` picks the default
    catalogue or a stand-in (module docstring)."""
    _check_options(num_images, seed, image_size, train_triplets, style)
    counts = triplet_counts(num_images, train_triplets)
    standin = STANDINS.get(style)
    configs = {}
    for cat_index, category in enumerate(CATEGORIES):
        triplets, galleries = DatasetDict(), DatasetDict()
        for split_index, split in enumerate(SPLITS):
            if standin is not None and split not in standin.splits:
                continue
            streams = _streams(seed, cat_index, split_index, standin)
            sampled = _sample_split(streams[0], category, split, counts[category][split], standin, streams[1])
            if hard_negatives:
                _add_negatives(sampled, split, streams[2])
            triplets[split], galleries[split] = _to_datasets(sampled, category, image_size)
        configs[category] = triplets
        configs[gallery_config(category)] = galleries
    return configs


def _streams(seed: int, cat_index: int, split_index: int, standin: Standin | None):
    """(structure, text, negatives) random streams of one split. The default catalogue writes its texts from
    the structure stream (as it always has); a stand-in writes them from a stream of their own, so that the
    Fashion IQ and enhFashionIQ stand-ins share triplets and images while their texts differ."""
    if standin is None:
        return (np.random.default_rng([seed, cat_index, split_index]), None,
                np.random.default_rng([seed, cat_index, split_index, 1]))
    key = [seed, cat_index, split_index]
    return (np.random.default_rng([*key, 2, standin.structure_salt]), np.random.default_rng([*key, 3, standin.text_salt]),
            np.random.default_rng([*key, 1, standin.structure_salt]))


def build_synthetic(
    out_dir: str | Path,
    *,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    train_triplets: int | None = None,
    hard_negatives: bool = False,
    overwrite: bool = False,
    style: str = DEFAULT_STYLE,
) -> Path:
    """Generate the catalogue (or a stand-in, `style`) and write it to `out_dir` (Parquet + dataset card);
    returns the folder."""
    _check_options(num_images, seed, image_size, train_triplets, style)
    standin = STANDINS.get(style)
    check_destination(out_dir, standin.pretty_name if standin else PRETTY_NAME, overwrite)  # before generating
    configs = generate_synthetic(num_images=num_images, seed=seed, image_size=image_size,
                                 train_triplets=train_triplets, hard_negatives=hard_negatives, style=style)
    options = {"num_images": num_images, "seed": seed, "image_size": image_size}
    command = (
        f"python -m facap_dataset build synthetic --out {shlex.quote(str(out_dir))} --num-images {num_images} "
        f"--seed {seed} --image-size {image_size}"
    )
    if standin is not None:
        options["style"] = style
        command += f" --style {style}"
    if train_triplets is not None:
        options["train_triplets"] = train_triplets
        command += f" --train-triplets {train_triplets}"
    if hard_negatives:
        options["hard_negatives"] = True
        command += " --hard-negatives"
    card = _card(command, options, _difficulty(configs), hard_negatives, standin)
    return write_dataset(out_dir, configs, card=card, overwrite=overwrite)


def _difficulty(configs: dict[str, DatasetDict], split: str = "validation") -> str:
    """A Markdown table of the attribute oracles on `split` (see `synthetic_oracle`)."""
    rows = ["| category | gallery | " + " | ".join(f"{kind} R@1 / R@10" for kind in ORACLES) + " |",
            "|---" * (len(ORACLES) + 2) + "|"]
    for category in CATEGORIES:
        triplets, gallery = configs[category][split], configs[gallery_config(category)][split]
        queries = [(c, from_json(r), t) for c, r, t in
                   zip(triplets["captions"], triplets["reference_attributes"], triplets["target_id"])]
        by_id = dict(zip(gallery["image_id"], map(from_json, gallery["attributes"])))
        cells = [oracle_recall(kind, queries, by_id) for kind in ORACLES]
        rows.append(f"| {category} | {len(by_id)} | "
                    + " | ".join(f"{c['recall@1']:.1f} / {c['recall@10']:.1f}" for c in cells) + " |")
    return (
        f"Expected recall (%) on the {split} split of oracles that rank the gallery by attribute matches "
        "(ties broken at random): *text* with the values the caption names, *image* with the reference's "
        "values, *composed* with both. The text oracle staying far below the composed one is what makes "
        "this a composed retrieval task.\n\n" + "\n".join(rows)
    )


def _check_options(
    num_images: int, seed: int, image_size: int, train_triplets: int | None = None, style: str = DEFAULT_STYLE
) -> None:
    if style not in STYLE_CHOICES:
        raise DataError(f"--style {style!r} is unknown; expected one of: {', '.join(STYLE_CHOICES)}")
    minimum = minimum_num_images()
    if num_images < minimum:
        raise DataError(
            f"--num-images {num_images} is too small to form triplets: every category needs one in each of "
            f"{', '.join(SPLITS)}, which takes at least {minimum} images"
        )
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise DataError(f"--image-size {image_size} is outside {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels")
    if seed < 0:
        raise DataError(f"--seed {seed} must be a non-negative integer")
    if train_triplets is not None and train_triplets < 1:
        raise DataError(f"--train-triplets {train_triplets} must be at least 1")


# ------------------------------------------------------------------------------------------ sampling

def _sample_split(
    rng: np.random.Generator,
    category: str,
    split: str,
    num_triplets: int,
    standin: Standin | None = None,
    text_rng: np.random.Generator | None = None,
) -> _Split:
    """`num_triplets` triplets and their gallery; texts from `text_rng` in the stand-in's style, or (default
    catalogue) from `rng` in a style drawn per triplet."""
    out = _Split()
    with_hard_negatives = split != "train"
    for _ in range(num_triplets):
        reference = _Image(_random_attributes(rng), _random_pose(rng))
        num_changes = int(rng.integers(1, MAX_CHANGES + 1))
        changed = [str(name) for name in rng.choice(ATTRIBUTE_NAMES, size=num_changes, replace=False)]
        target = _Image(_change(reference.attributes, changed, rng), _random_pose(rng))
        if standin is None:
            style = STYLES[int(rng.integers(len(STYLES)))]
            captions = write_text(reference.attributes, target.attributes, category, style, rng)
        elif standin.writer == COLLOQUIAL:
            style, captions = COLLOQUIAL, write_colloquial(reference.attributes, target.attributes, text_rng)
        else:
            style = standin.writer
            captions = write_text(reference.attributes, target.attributes, category, style, text_rng)
        triplet = _Triplet(reference, target, captions, style)
        if with_hard_negatives:
            triplet.gallery_negatives = [
                _Image(_distractor(reference.attributes, target.attributes, rng), _random_pose(rng))
                for _ in range(NUM_DISTRACTORS)
            ] + [
                _Image(_near_copy(reference.attributes, target.attributes, rng), _random_pose(rng))
                for _ in range(NUM_NEAR_COPIES)
            ]
        out.triplets.append(triplet)
        out.gallery += [reference, target, *triplet.gallery_negatives]
    order = rng.permutation(len(out.gallery))
    out.gallery = [out.gallery[i] for i in order]
    prefix = standin.id_prefix if standin is not None else "syn"
    for number, image in enumerate(out.gallery):  # ids follow the shuffled order: they leak no role
        image.image_id = f"{prefix}-{category}-{split}-{number:06d}"
    return out


def _add_negatives(split: _Split, split_name: str, rng: np.random.Generator) -> None:
    """One hard negative per triplet: drawn afresh in train (whose gallery has none), else picked among the
    triplet's gallery distractors and near-copies."""
    if split_name == "train":
        for triplet in split.triplets:
            make = _distractor if rng.random() < DISTRACTOR_SHARE else _near_copy
            attributes = make(triplet.reference.attributes, triplet.target.attributes, rng)
            triplet.negative = _Image(attributes, _random_pose(rng))
        return
    for triplet in split.triplets:
        triplet.negative = triplet.gallery_negatives[int(rng.integers(len(triplet.gallery_negatives)))]


def _random_attributes(rng: np.random.Generator) -> Attributes:
    return {name: str(rng.choice(values)) for name, values in ATTRIBUTES.items()}


def _change(attributes: Attributes, names, rng: np.random.Generator) -> Attributes:
    """A copy of `attributes` with each attribute of `names` set to another value."""
    changed = dict(attributes)
    for name in names:
        changed[name] = str(rng.choice([v for v in ATTRIBUTES[name] if v != attributes[name]]))
    return changed


def _distractor(reference: Attributes, target: Attributes, rng: np.random.Generator) -> Attributes:
    """Has every value the text names, but differs from the reference (and target) elsewhere."""
    unchanged = [name for name in ATTRIBUTE_NAMES if reference[name] == target[name]]
    names = rng.choice(unchanged, size=int(rng.integers(1, min(2, len(unchanged)) + 1)), replace=False)
    return _change(target, names, rng)


def _near_copy(reference: Attributes, target: Attributes, rng: np.random.Generator) -> Attributes:
    """The reference with none or only part of the requested change applied."""
    changed = changed_attributes(reference, target)
    applied = rng.choice(changed, size=int(rng.integers(0, len(changed))), replace=False)
    return {**reference, **{name: target[name] for name in applied}}


def _random_pose(rng: np.random.Generator) -> Pose:
    tint = rng.integers(190, 236)
    return Pose(
        scale=float(rng.uniform(0.95, 1.15)),
        shift=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
        angle=float(rng.uniform(-7.0, 7.0)),
        background=tuple(int(np.clip(tint + d, 0, 255)) for d in rng.integers(-12, 13, size=3)),
        shade=tuple(int(d) for d in rng.integers(-12, 13, size=3)),
        pattern_phase=int(rng.integers(4)),
    )


# ------------------------------------------------------------------------------------------ datasets

def _to_datasets(split: _Split, category: str, image_size: int) -> tuple[Dataset, Dataset]:
    negatives = [t.negative for t in split.triplets if t.negative is not None]
    images = {id(image): image for image in [*split.gallery, *negatives]}  # gallery negatives are drawn once
    encoded = {key: {"bytes": _render(image, category, image_size), "path": None} for key, image in images.items()}
    triplets = {
        "reference_id": [t.reference.image_id for t in split.triplets],
        "target_id": [t.target.image_id for t in split.triplets],
        "captions": [t.captions for t in split.triplets],
        "category": [category] * len(split.triplets),
        "reference_image": [encoded[id(t.reference)] for t in split.triplets],
        "target_image": [encoded[id(t.target)] for t in split.triplets],
        "reference_attributes": [to_json(t.reference.attributes) for t in split.triplets],
        "target_attributes": [to_json(t.target.attributes) for t in split.triplets],
        "style": [t.style for t in split.triplets],
        "num_changes": [len(changed_attributes(t.reference.attributes, t.target.attributes)) for t in split.triplets],
    }
    features = SYNTHETIC_TRIPLET_FEATURES
    if negatives:
        triplets[NEGATIVE_IMAGE_COLUMN] = [encoded[id(image)] for image in negatives]
        triplets["negative_attributes"] = [to_json(image.attributes) for image in negatives]
        features = SYNTHETIC_NEGATIVE_FEATURES
    gallery = {
        "image_id": [image.image_id for image in split.gallery],
        "category": [category] * len(split.gallery),
        "image": [encoded[id(image)] for image in split.gallery],
        "attributes": [to_json(image.attributes) for image in split.gallery],
    }
    return (Dataset.from_dict(triplets, features=features),
            Dataset.from_dict(gallery, features=SYNTHETIC_GALLERY_FEATURES))


def _render(image: _Image, category: str, image_size: int) -> bytes:
    return encode_jpeg(draw_garment(category, image.attributes, image.pose, image_size), quality=JPEG_QUALITY)


def _card(build_command: str, options: dict, difficulty: str, hard_negatives: bool,
          standin: Standin | None) -> DatasetCardInfo:
    attribute_list = "\n".join(f"- `{name}`: {', '.join(values)}" for name, values in ATTRIBUTES.items())
    negatives = (
        " Triplets also have `negative_image` (and its `negative_attributes`), one hard negative each: in "
        f"train a freshly drawn distractor ({DISTRACTOR_SHARE:.0%}) or near-copy, not in the gallery; in validation and test one of the "
        "triplet's own gallery distractors or near-copies. The trainer adds them to the loss's candidates."
    ) if hard_negatives else ""
    galleries = (
        f"Validation and test galleries hold, per triplet, {NUM_DISTRACTORS} distractors that match everything the "
        f"text names but differ from the reference elsewhere and {NUM_NEAR_COPIES} near-copies of the reference "
        "lacking the requested change, so neither text nor image alone finds the target."
    )
    if standin is None:
        pretty_name, description = PRETTY_NAME, (
            "A procedural fashion catalogue for composed image retrieval, drawn with Pillow: dresses, shirts "
            "and tops/tees with attributes, triplets whose target differs from the reference in 1-3 "
            "attributes, and modification texts written from that difference in Fashion IQ's style (two "
            "short relative captions) and FACap's style (one detailed sentence). " + galleries
        )
        sources = (citations.FACAP, citations.FASHIONIQ)
    else:
        pretty_name, description = standin.pretty_name, (
            "**Synthetic data**: a procedural fashion catalogue drawn with Pillow (dresses, shirts and tops/tees "
            "with attributes; targets differ from their reference in 1-3 attributes); no real image or text. "
            f"{standin.stands_for} {galleries} Its numbers show a pipeline working, not a finding about the "
            "real dataset."
        )
        sources = standin.sources
    return DatasetCardInfo(
        pretty_name=pretty_name,
        description=description,
        source="Generated by `facap_dataset.synthetic`; no external data or images are used.",
        license="apache-2.0",
        citations=sources,
        build_command=build_command,
        options=options,
        tags=("fashion", "composed-image-retrieval", "synthetic"),
        extra_sections={
            "Attributes": attribute_list + "\n\nExtra columns: triplets have `reference_attributes`, "
            "`target_attributes` (JSON), `style` (the text writer: `fashioniq`, `facap` or `colloquial`) and "
            "`num_changes` (how many attributes changed, whatever the text names); galleries have `attributes` "
            "(JSON). Test targets are visible." + negatives,
            "Difficulty": difficulty,
        },
    )


# ------------------------------------------------------------------------------------------ CLI

def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthetic",
        help="generate the synthetic fashion catalogue (seconds, no downloads)",
        description="Generate the synthetic fashion catalogue as a dataset folder (Parquet + dataset card).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder")
    parser.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                        help=f"images to draw in total, over categories and splits (default {DEFAULT_NUM_IMAGES})")
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give equal datasets")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"image side in pixels (default {DEFAULT_IMAGE_SIZE}; 224 for BLIP-2-sized models)")
    parser.add_argument("--train-triplets", type=int, default=None, metavar="N",
                        help="training triplets per category, in place of the train split's share of --num-images "
                             "(the default); validation and test stay as --num-images makes them")
    parser.add_argument("--hard-negatives", action="store_true",
                        help="add a `negative_image` column: one hard negative per triplet (a distractor or "
                             "near-copy of the reference), which train_accelerate.py adds to the loss's candidates; "
                             "every other column stays the same")
    parser.add_argument("--style", choices=STYLE_CHOICES, default=DEFAULT_STYLE,
                        help="mixed: the default catalogue (both text styles); facap / fashioniq / enhfashioniq: "
                             "synthetic stand-ins for FACap (train+validation, detailed texts), Fashion IQ "
                             "(train+validation, short colloquial captions) and enhFashionIQ (the Fashion IQ "
                             "stand-in's validation set, same options and seed, with detailed texts)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder holding another dataset (files a build did not write are "
                             "never deleted)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = build_synthetic(args.out, num_images=args.num_images, seed=args.seed, image_size=args.image_size,
                          train_triplets=args.train_triplets, hard_negatives=args.hard_negatives,
                          overwrite=args.overwrite, style=args.style)
    seconds = time.perf_counter() - start
    splits = STANDINS[args.style].splits if args.style in STANDINS else SPLITS
    counts = {category: {s: n for s, n in split_counts.items() if s in splits}
              for category, split_counts in triplet_counts(args.num_images, args.train_triplets).items()}
    drawn = sum(c[s] * (_IMAGES_PER_TRIPLET[s] + (args.hard_negatives and s == "train"))
                for c in counts.values() for s in c)
    print(f"wrote {out} in {seconds:.1f} s ({drawn} images, {drawn / seconds:.0f} images/s)")
    for category, split_counts in counts.items():
        print(f"  {category}: " + ", ".join(f"{s} {n} triplets" for s, n in split_counts.items()))
    return 0
