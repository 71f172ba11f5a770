"""A tiny random CLIP model folder for tests (16-d, one layer, 32 px images), seeded and built in well under
a second.

    from tiny_clip import save_tiny_clip
    folder = save_tiny_clip(tmp_path / "clip")
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_clip(folder: Path) -> Path:
    """Save a seeded tiny `CLIPModel` and its image processor to `folder`; returns `folder`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    with torch.random.fork_rng():  # seeded weights without touching the session's global RNG
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
