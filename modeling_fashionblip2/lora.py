"""LoRA on the Q-Former (and optionally the vision attention) through `peft`, as an alternative to full Q-Former
training. Not part of the remote code (it uses `facap_io`).

Adapters written by `save_adapter` load with `peft.AutoPeftModel.from_pretrained(dir, trust_remote_code=True)` on
a machine without this package (the base model comes through its own remote code), and with
`peft.PeftModel.from_pretrained(base_model, dir)`.

Under LoRA every base weight is frozen, the query tokens and temperature included; FashionBLIP-2's new parts (the
vision adapters and the matching head) are trained in full as `modules_to_save`, so they are saved with the LoRA
weights and survive `merge_and_unload`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from facap_io.atomic import staged_folder, write_json
from facap_io.errors import FacapError

# Module paths are matched in full (peft uses re.fullmatch for a string `target_modules`).
QFORMER_ATTENTION = r"qformer\.encoder\.layer\.\d+\.(attention|crossattention)\.attention\.(query|key|value)"
VISION_ATTENTION = r"vision_model\.encoder\.layers\.\d+\.self_attn\.(qkv|projection)"
ADAPTER_CONFIG = "adapter_config.json"
# peft records the base model's own class (this package, which is not on AutoPeftModel's import allowlist);
# transformers' AutoModel resolves the same class through the base folder's `auto_map` instead.
AUTO_MAPPING = {"base_model_class": "AutoModel", "parent_library": "transformers"}


class AdapterError(FacapError):
    """A LoRA adapter that cannot be saved loadably (no base model to point at)."""


def qformer_lora_config(model, *, r: int = 8, alpha: int = 16, dropout: float = 0.05, vision_attention: bool = False):
    """A `peft.LoraConfig` for `model` (a FashionBlip2Model): LoRA on the Q-Former's self- and cross-attention
    projections (and the ViT's attention when `vision_attention`), full training of adapters + matching head."""
    from peft import LoraConfig

    if r < 1:
        raise ValueError(f"r={r!r} must be a positive integer")
    targets = QFORMER_ATTENTION if not vision_attention else f"({QFORMER_ATTENTION})|({VISION_ATTENTION})"
    modules_to_save = [f"adapters.{name}" for name in model.adapters]
    if model.config.matching == "multihead":
        modules_to_save.append("matching_head")
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, modules_to_save=modules_to_save or None
    )


def add_qformer_lora(model, **options):
    """Wrap `model` in a `peft.PeftModel` with `qformer_lora_config(model, **options)`. The wrapper forwards
    `get_query_embeddings`, `get_candidate_embeddings`, `score` and `forward`; `save_pretrained` writes only the
    LoRA and `modules_to_save` weights; `merge_and_unload()` gives back a plain FashionBlip2Model."""
    from peft import get_peft_model

    return get_peft_model(model, qformer_lora_config(model, **options))


def save_adapter(peft_model, folder: str | os.PathLike, *, base_model: str | os.PathLike | None = None) -> Path:
    """Save the LoRA and `modules_to_save` weights of `peft_model` to `folder` (replaced whole, atomically), with an
    adapter config that `AutoPeftModel` can follow: `base_model_name_or_path` is `base_model` (a saved folder or
    Hub id; default: where the base model was loaded from) and the base class is transformers' `AutoModel`."""
    base = base_model if base_model is not None else peft_model.active_peft_config.base_model_name_or_path
    if not base:
        raise AdapterError(
            f"cannot save the adapter to {folder}: the base model was not loaded from a folder or Hub id; pass "
            "base_model= (where the base model is saved), so that the adapter can find it"
        )
    base = os.path.abspath(base) if os.path.isdir(base) else str(base)
    with staged_folder(folder) as staging:
        peft_model.save_pretrained(staging)
        config = json.loads((staging / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        config.update(base_model_name_or_path=base, auto_mapping=AUTO_MAPPING)
        write_json(staging / ADAPTER_CONFIG, config)
    return Path(folder)


__all__ = [
    "AdapterError",
    "QFORMER_ATTENTION",
    "VISION_ATTENTION",
    "add_qformer_lora",
    "qformer_lora_config",
    "save_adapter",
]
