"""LoRA on the Q-Former (and optionally the vision attention) through `peft`, as an alternative to full Q-Former
training. Not part of the remote code: saved LoRA adapters load with `peft.PeftModel.from_pretrained(base, dir)`.

Under LoRA every base weight is frozen, the query tokens and temperature included; FashionBLIP-2's new parts (the
vision adapters and the matching head) are trained in full as `modules_to_save`, so they are saved with the LoRA
weights and survive `merge_and_unload`.
"""

from __future__ import annotations

# Module paths are matched in full (peft uses re.fullmatch for a string `target_modules`).
QFORMER_ATTENTION = r"qformer\.encoder\.layer\.\d+\.(attention|crossattention)\.attention\.(query|key|value)"
VISION_ATTENTION = r"vision_model\.encoder\.layers\.\d+\.self_attn\.(qkv|projection)"


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


__all__ = ["QFORMER_ATTENTION", "VISION_ATTENTION", "add_qformer_lora", "qformer_lora_config"]
