"""A small CIRR-shaped raw release for tests: caption and split files of the real shape, tiny PNGs.

    from cirr_release import write_cirr_release
    release = write_cirr_release(tmp_path / "cirr")        # then: build cirr --raw-dir release.root

Per split (`train`, `val`, `test1` as in the release's file names) `num_sets` image sets of six images, one
pair per set (reference = the set's first member, target = another member; test1 targets hidden), and
`num_unused` extra gallery images that no caption names (the split file lists them, as CIRR's do). Image
names and paths follow the release: `dev-3-0-img1` at `./dev/dev-3-0-img1.png`, train images in numbered
sub-folders. Every image is a distinct flat colour, so a test can compute rankings by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

FILE_SPLITS = ("train", "val", "test1")
_PREFIX = {"train": "train", "val": "dev", "test1": "test1"}
SET_SIZE = 6


@dataclass
class CirrRelease:
    root: Path
    captions: dict[str, list[dict]] = field(default_factory=dict)  # file split -> caption entries
    splits: dict[str, dict[str, str]] = field(default_factory=dict)  # file split -> {name: relative path}
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # image name -> its RGB colour

    def captions_path(self, split: str) -> Path:
        return self.root / "captions" / f"cap.rc2.{split}.json"

    def split_path(self, split: str) -> Path:
        return self.root / "image_splits" / f"split.rc2.{split}.json"

    def rewrite(self) -> None:
        """Write `captions` and `splits` back after a test edited them."""
        for split in self.captions:
            self.captions_path(split).write_text(json.dumps(self.captions[split]))
            self.split_path(split).write_text(json.dumps(self.splits[split]))


def _relative_path(split: str, name: str, set_id: int) -> str:
    folder = f"./train/{set_id % 3}" if split == "train" else f"./{_PREFIX[split]}"
    return f"{folder}/{name}.png"


def write_cirr_release(
    root: Path,
    *,
    num_sets: int = 4,
    num_unused: int = 2,
    image_size: int = 12,
    seed: int = 0,
    splits: tuple[str, ...] = FILE_SPLITS,
) -> CirrRelease:
    """Write the release under `root` (captions/, image_splits/, the PNGs) and return what it holds."""
    rng = np.random.default_rng(seed)
    release = CirrRelease(Path(root))
    (release.root / "captions").mkdir(parents=True, exist_ok=True)
    (release.root / "image_splits").mkdir(parents=True, exist_ok=True)
    used_colours: set[tuple[int, int, int]] = set()
    pair_id = 0
    for split in splits:
        entries, gallery = [], {}

        def add_image(name: str, set_id: int) -> None:
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            while colour in used_colours:
                colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            used_colours.add(colour)
            relative = _relative_path(split, name, set_id)
            path = release.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (image_size, image_size), colour).save(path, format="PNG")
            gallery[name] = relative
            release.colours[name] = colour

        for set_id in range(num_sets):
            members = [f"{_PREFIX[split]}-{set_id}-{pair_id}-img{j}" for j in range(SET_SIZE)]
            for name in members:
                add_image(name, set_id)
            target_rank = 1 + set_id % (SET_SIZE - 1)
            entry = {
                "pairid": pair_id,
                "reference": members[0],
                "caption": f"make it like image {target_rank} of set {set_id}",
                "img_set": {"id": set_id, "members": members, "reference_rank": 0, "target_rank": target_rank},
            }
            if split != "test1":
                entry["target_hard"] = members[target_rank]
                entry["target_soft"] = {members[target_rank]: 1.0}
            entries.append(entry)
            pair_id += 1
        for number in range(num_unused):
            add_image(f"{_PREFIX[split]}-unused-{number}-img0", number)
        release.captions[split], release.splits[split] = entries, gallery
    release.rewrite()
    return release
