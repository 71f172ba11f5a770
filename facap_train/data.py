"""Training data for `train_accelerate.py`: built dataset folders -> triplets -> processor batches.

The pieces are deterministic functions of (seed, epoch, example index), never of a random state that lives
in a worker process, so that a run resumed from a checkpoint sees exactly the batches and captions that
an uninterrupted run would have seen, on any number of DataLoader workers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import datasets
import torch
from PIL import Image
from tqdm.auto import tqdm

from facap_dataset.captions import CAPTION_JOIN_RULES, join_captions
from facap_dataset.errors import DataError, SchemaError
from facap_dataset.images import load_rgb
from facap_dataset.loading import OpenedDataset, open_dataset
from facap_dataset.schema import NEGATIVE_IMAGE_COLUMN

# The columns training reads, plus the optional hard negative; anything else a dataset carries
# is dropped before mixing.
TRIPLET_COLUMNS = ("captions", "reference_image", "target_image")
# image column -> the model argument `{role}_pixel_values` it feeds
IMAGE_ROLES = {"reference_image": "reference", "target_image": "target", NEGATIVE_IMAGE_COLUMN: "negative"}
# Caption augmentation modes: `none` joins with --caption-join; `both-orders` picks one of the two orderings
# of a Fashion IQ caption pair; `all` also allows either caption alone.
CAPTION_AUGMENTATIONS = ("both-orders", "all", "none")


@dataclass(frozen=True)
class TrainingTriplets:
    """The mixed training split and where each part came from (for the run summary and args.json)."""

    table: datasets.Dataset
    sources: tuple[str, ...]  # "DATASET:CONFIG (N triplets)" per part

    @property
    def has_negatives(self) -> bool:
        """Whether every triplet brings a hard negative image (added to the loss's candidates)."""
        return NEGATIVE_IMAGE_COLUMN in self.table.column_names

    def texts(self) -> list[str]:
        """Every caption of the split, for building a tokenizer vocabulary."""
        return [caption for captions in self.table["captions"] for caption in captions]


def load_training_triplets(
    datasets_: Sequence[OpenedDataset | str], configs: Sequence[str], split: str = "train", *, hard_negatives: bool = True
) -> TrainingTriplets:
    """Load `split` of every requested config of every dataset (opened with `facap_dataset.loading.open_dataset`,
    or a name to open) and concatenate them.

    Each config must exist in at least one dataset; a config that a dataset lacks is simply not taken from
    it (so FACap and Fashion IQ folders can be mixed with `--configs dress,shirt,toptee,...`). The
    `negative_image` column is kept when `hard_negatives` and every part has it; parts that disagree are an
    error rather than a silent drop. A shard that cannot be read is a DataError naming the dataset and config.
    """
    opened = [d if isinstance(d, OpenedDataset) else open_dataset(d) for d in datasets_]
    for config in configs:
        if not any(config in dataset.configs for dataset in opened):
            listing = "; ".join(f"{d.name}: {', '.join(sorted(d.configs))}" for d in opened)
            raise DataError(f"unknown dataset config {config!r} (available configs: {listing})")
    keys = [(dataset, config) for dataset in opened for config in configs if config in dataset.configs]
    parts = [_load_split(dataset, config, split) for dataset, config in keys]
    with_negatives = [NEGATIVE_IMAGE_COLUMN in part.column_names for part in parts]
    use_negatives = hard_negatives and all(with_negatives)
    if hard_negatives and any(with_negatives) and not use_negatives:
        lacking = ", ".join(f"{d.name}:{config}" for (d, config), has in zip(keys, with_negatives) if not has)
        raise DataError(f"{lacking} lack(s) the {NEGATIVE_IMAGE_COLUMN!r} column that the other training data "
                        "has; train with --no-hard-negatives to use none")
    if not use_negatives:
        parts = [part.remove_columns([NEGATIVE_IMAGE_COLUMN]) if has else part
                 for part, has in zip(parts, with_negatives)]
    note = ", with hard negatives" if use_negatives else ""
    sources = [f"{d.name}:{config} ({len(part)} triplets{note})" for (d, config), part in zip(keys, parts)]
    table = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(table) == 0:
        raise DataError(f"the {split!r} split of {', '.join(sources)} is empty")
    return TrainingTriplets(table=table, sources=tuple(sources))


def _load_split(dataset: OpenedDataset, config: str, split: str) -> datasets.Dataset:
    # The card's split sizes tell an empty split apart before `datasets` fails on it obscurely.
    if dataset.split_sizes(config).get(split) == 0:
        raise DataError(f"the {split!r} split of {dataset.name}:{config} is empty")
    part = dataset.load_split(config, split)
    missing = [column for column in TRIPLET_COLUMNS if column not in part.column_names]
    if missing:
        raise SchemaError(
            f"dataset {dataset.name!r} config {config!r} lacks the triplet column(s) {', '.join(missing)} "
            f"(it has {', '.join(part.column_names)}); is it a gallery config?"
        )
    part = part.select_columns([column for column in (*TRIPLET_COLUMNS, NEGATIVE_IMAGE_COLUMN)
                                if column in part.column_names])
    # Keep the encoded bytes: decoding happens in the DataLoader workers through the one safe decoder.
    for column in IMAGE_ROLES:
        if column in part.column_names:
            part = part.cast_column(column, datasets.Image(decode=False))
    return part


def choose_caption(captions: Sequence[str], augmentation: str, join_rule: str, rng: random.Random) -> str:
    """The query text of one training example: an augmented variant or the deterministic join."""
    if augmentation == "none" or len(captions) < 2:
        return join_captions(captions, join_rule)
    variants = list(join_captions(captions, "both-orders"))
    if augmentation == "all":
        variants += [join_captions(captions, "first"), join_captions(captions, "second")]
    return rng.choice(variants)


class TripletDataset(torch.utils.data.Dataset):
    """Map-style view of the training triplets: reference, target and, when the table has it, the hard negative
    (decoded RGB images, or rows of `pixels` from `preprocess_pixels`) and the augmented query text.

    The caption variant of example `i` in epoch `e` is drawn from `Random(f"{seed}-{e}-{i}")`; the trainer
    sets the epoch (`facap_train.loop.set_epoch`) before each epoch's iterator (and its workers) is created.
    """

    def __init__(
        self,
        table: datasets.Dataset,
        *,
        seed: int,
        caption_augmentation: str = "both-orders",
        caption_join: str = "fashioniq",
        pixels: torch.Tensor | None = None,
    ):
        if caption_augmentation not in CAPTION_AUGMENTATIONS:
            raise ValueError(f"unknown caption augmentation {caption_augmentation!r}")
        if caption_join not in CAPTION_JOIN_RULES or caption_join == "both-orders":
            raise ValueError(f"caption join rule {caption_join!r} does not give one query text")
        self.table = table
        self.seed = seed
        self.caption_augmentation = caption_augmentation
        self.caption_join = caption_join
        self.pixels = pixels
        self.image_columns = [column for column in IMAGE_ROLES if column in table.column_names]
        self._rows = table.select_columns(["captions", *(self.image_columns if pixels is None else [])])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        rows = self._rows[indices]  # one Arrow read per batch instead of one per example
        examples = []
        for k, index in enumerate(indices):
            text = choose_caption(
                rows["captions"][k],
                self.caption_augmentation,
                self.caption_join,
                random.Random(f"{self.seed}-{self.epoch}-{index}"),
            )
            if self.pixels is not None:
                images = {IMAGE_ROLES[c]: self.pixels[index, p] for p, c in enumerate(self.image_columns)}
            else:
                images = {IMAGE_ROLES[c]: self._image(rows[c][k], index, c) for c in self.image_columns}
            examples.append({"text": text, **images})
        return examples

    def _image(self, encoded: dict, index: int, column: str) -> Image.Image:
        if encoded is None:
            raise DataError(f"training triplet {index} has no {column} (a test split with hidden targets?)")
        return load_rgb(encoded["bytes"], name=encoded.get("path") or f"triplet {index} {column}")


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A fresh permutation per epoch, a pure function of (seed, epoch).

    Accelerate shards its batches across processes and calls `set_epoch`; resuming skips the batches
    already consumed in the current epoch, so no example is repeated or skipped.
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(self.size, generator=generator).tolist()


class TripletCollator:
    """Processor call in the DataLoader workers: a list of examples -> model keyword tensors."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        roles = [role for role in IMAGE_ROLES.values() if role in examples[0]]
        images = [example[role] for role in roles for example in examples]
        texts = [example["text"] for example in examples]
        if isinstance(images[0], torch.Tensor):  # pixels cached by `preprocess_pixels`
            encoded = self.processor(text=texts, return_tensors="pt")
            pixels = torch.stack(images)
        else:
            encoded = self.processor(images=images, text=texts, return_tensors="pt")
            pixels = encoded["pixel_values"]
        batch = {f"{role}_pixel_values": part for role, part in zip(roles, pixels.split(len(examples)))}
        return {**batch, "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def preprocess_pixels(table: datasets.Dataset, processor, *, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Every triplet's images (reference, target, and negative when present) through the processor once:
    float32 `(N, K, 3, S, S)`, K images per triplet in `TripletDataset.image_columns` order.

    The processor has no random augmentation, so cached pixels equal those the collator would compute; it
    saves decoding and processing K x batch images per step (the input pipeline's main CPU cost), at
    N x K x 3 x S x S x 4 bytes of memory (2.2 GB for `make demo`'s 15,000 triplets at 64 px with hard negatives, K = 3).
    """
    dataset = TripletDataset(table, seed=0, caption_augmentation="none")
    chunks = []
    for start in tqdm(range(0, len(table), batch_size), desc="caching pixels", disable=not progress):
        examples = dataset.__getitems__(list(range(start, min(start + batch_size, len(table)))))
        roles = [IMAGE_ROLES[column] for column in dataset.image_columns]
        images = [example[role] for role in roles for example in examples]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        chunks.append(torch.stack(pixels.split(len(examples)), dim=1))
    return torch.cat(chunks)


def build_dataloader(
    dataset: TripletDataset, processor, *, batch_size: int, seed: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """Fixed-size shuffled batches (drop_last: the contrastive labels need equal batches on every process)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(dataset), seed),
        collate_fn=TripletCollator(processor),
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=False,  # workers must be re-forked each epoch to see the new epoch number
        # Each new iterator draws its workers' base seed from this generator rather than from the global
        # torch RNG, which therefore advances only with the model's own randomness (dropout) and resumes exactly.
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=4 if num_workers else None,
    )
