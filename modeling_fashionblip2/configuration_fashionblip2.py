"""FashionBLIP-2 configuration.

Remote-code rule: this file is copied next to saved weights and imported by transformers as a
dynamic module, so it imports only transformers/torch/stdlib and its flat siblings (`from .x import Y`).
"""

from __future__ import annotations

import copy

from transformers import PreTrainedConfig
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig

MATCHING_MODES = ("multihead", "max")
# The custom pipeline saved with every model (transformers' `custom_pipelines` config entry): the flat sibling
# `pipeline_fashionblip2.py` holds the class, loaded with `pipeline(task, model=..., trust_remote_code=True)`.
CUSTOM_PIPELINES = {
    "composed-image-retrieval": {
        "impl": "pipeline_fashionblip2.ComposedImageRetrievalPipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
}

# Presets for random-init models. `tiny` serves tests, `demo` the CPU demo; `blip2-vit-g` is the architecture of
# Salesforce/blip2-itm-vit-g (a random model of that shape, e.g. for parameter counts on the meta device; real
# weights come from `FashionBlip2Model.from_blip2`).
PRESETS: dict[str, dict] = {
    "tiny": {
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            # BLIP-2's default 1e-10 makes every random image embed alike.
            "initializer_range": 0.02,
        },
        "qformer_config": {
            "vocab_size": 1024,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            # With the default 2, a 2-layer Q-Former would see the image in layer 0 only.
            "cross_attention_frequency": 1,
        },
        "num_query_tokens": 8,
        "image_text_hidden_size": 32,
        "num_heads": 4,
        "head_dim": 32,
        "adapter_dim": 8,
        "max_text_length": 32,
        "freeze_vision": False,
    },
    "demo": {
        "vision_config": {
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 16,
            "initializer_range": 0.02,
        },
        "qformer_config": {
            "vocab_size": 1024,
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 512,
            "max_position_embeddings": 64,
            "cross_attention_frequency": 1,
            # No dropout: trained from scratch for ~1,000 steps, this small Q-Former with BLIP-2's 0.1 stays on
            # a colour-only solution for most of the run (docs/training.md, "make demo").
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        "num_query_tokens": 8,
        "image_text_hidden_size": 128,
        "num_heads": 4,
        "head_dim": 64,
        "adapter_dim": 32,
        "max_text_length": 40,
        "freeze_vision": False,
    },
    "blip2-vit-g": {
        "vision_config": {
            "hidden_size": 1408,
            "intermediate_size": 6144,
            "num_hidden_layers": 39,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            "initializer_range": 0.02,
        },
        "qformer_config": {
            # 30522 BERT word pieces + BLIP-2's added [DEC] token.
            "vocab_size": 30523,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
            "cross_attention_frequency": 2,
        },
        "num_query_tokens": 32,
        "image_text_hidden_size": 256,
        "num_heads": 12,
        "head_dim": 256,
        "adapter_dim": 64,
        "max_text_length": 64,
        "freeze_vision": True,
    },
}


class FashionBlip2Config(PreTrainedConfig):
    r"""
    Configuration of [`FashionBlip2Model`]: BLIP-2's vision tower and Q-Former plus FashionBLIP-2's adapters and
    multi-head query-candidate matching.

    vision_config (`dict` or `Blip2VisionConfig`): the frozen image encoder.
    qformer_config (`dict` or `Blip2QFormerConfig`): the shared Q-Former; `encoder_hidden_size` is forced to the
        vision width and `use_qformer_text_input` to `True` (the query branch feeds text tokens).
    num_query_tokens (`int`): n_q, the learned queries.
    image_text_hidden_size (`int`): width of BLIP-2's ITC projections (used by `matching="max"`).
    num_heads (`int`): n_t, rows after TokenMix (n_q -> n_t).
    head_dim (`int`): d_c, channels after ChannelMix (d_q -> d_c).
    adapter_dim (`int`): bottleneck width of the vision adapters; 0 disables them.
    adapter_layers (`list[int]`, *optional*): vision layers that get an adapter; `None` means all.
    adapter_act (`str`): activation inside the adapters.
    matching (`str`): `"multihead"` (TokenMix + ChannelMix, score = dot product) or `"max"` (BLIP-2 ITC style).
    freeze_vision (`bool`): keep the vision tower's own weights frozen (adapters still train).
    temperature_init (`float`): initial value of the learnable softmax temperature.
    reference_negatives (`bool`): in the training loss, also score each query against the candidate embeddings of
        the batch's reference images (as negatives). The reference is the hardest negative of composed retrieval
        (image-only similarity ranks it first), and in-batch targets rarely resemble it.
    max_text_length (`int`): longest accepted `input_ids`; the processor truncates to it.
    preset (`str`, *optional*): name of the preset this config came from (recorded for model cards).
    custom_pipelines (`dict`, *optional*): transformers' custom-pipeline entry; defaults to the
        `composed-image-retrieval` pipeline saved with the model.
    """

    model_type = "fashionblip2"
    sub_configs = {"vision_config": Blip2VisionConfig, "qformer_config": Blip2QFormerConfig}

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    image_text_hidden_size: int = 256
    num_heads: int = 12
    head_dim: int = 256
    adapter_dim: int = 64
    adapter_layers: list[int] | None = None
    adapter_act: str = "gelu"
    matching: str = "multihead"
    freeze_vision: bool = True
    temperature_init: float = 0.07
    reference_negatives: bool = False
    max_text_length: int = 64
    preset: str | None = None
    initializer_range: float = 0.02
    custom_pipelines: dict | None = None

    def __post_init__(self, **kwargs):
        self.vision_config = _as_config(self.vision_config, Blip2VisionConfig)
        self.qformer_config = _as_config(self.qformer_config, Blip2QFormerConfig)
        # A stand-alone Blip2QFormerConfig keeps BLIP-2's 1408 here; cross-attention reads the vision width.
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        self.qformer_config.use_qformer_text_input = True
        if self.custom_pipelines is None:
            self.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)
        super().__post_init__(**kwargs)
        self._check_fields()

    def _check_fields(self) -> None:
        """Raise `ValueError` naming the field and value of the first inconsistent setting."""
        if self.matching not in MATCHING_MODES:
            raise ValueError(f"matching={self.matching!r} is unknown; choose one of {', '.join(MATCHING_MODES)}")
        for name in ("num_query_tokens", "num_heads", "head_dim", "image_text_hidden_size", "max_text_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.adapter_dim < 0:
            raise ValueError(f"adapter_dim={self.adapter_dim!r} must be >= 0 (0 disables the adapters)")
        num_layers = self.vision_config.num_hidden_layers
        for layer in self.adapter_layers or []:
            if not 0 <= layer < num_layers:
                raise ValueError(f"adapter_layers contains {layer}, outside the {num_layers} vision layers")
        if self.max_text_length > self.qformer_config.max_position_embeddings:
            raise ValueError(
                f"max_text_length={self.max_text_length} exceeds qformer_config.max_position_embeddings="
                f"{self.qformer_config.max_position_embeddings}"
            )
        if self.temperature_init <= 0:
            raise ValueError(f"temperature_init={self.temperature_init!r} must be > 0")

    @property
    def adapted_layers(self) -> list[int]:
        """Indices of the vision layers that carry an adapter (empty when `adapter_dim == 0`)."""
        if self.adapter_dim == 0:
            return []
        if self.adapter_layers is None:
            return list(range(self.vision_config.num_hidden_layers))
        return sorted(set(self.adapter_layers))

    @property
    def embedding_dim(self) -> int:
        """Size D of one query/candidate embedding row: n_t * d_c (multihead) or the ITC width (max)."""
        if self.matching == "multihead":
            return self.num_heads * self.head_dim
        return self.image_text_hidden_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "FashionBlip2Config":
        """Build the named preset (`tiny`, `demo`, `blip2-vit-g`); `overrides` replace top-level fields, and
        `vision_config` / `qformer_config` dicts are merged into the preset's."""
        if name not in PRESETS:
            raise ValueError(f"preset {name!r} is unknown; choose one of {', '.join(PRESETS)}")
        fields = copy.deepcopy(PRESETS[name])
        for key in ("vision_config", "qformer_config"):
            fields[key].update(overrides.pop(key, None) or {})
        fields.update(overrides)
        return cls(preset=name, **fields)


def _as_config(value, config_class):
    if value is None:
        return config_class()
    if isinstance(value, dict):
        return config_class(**value)
    if isinstance(value, config_class):
        return value
    raise TypeError(f"expected a dict or {config_class.__name__}, got {type(value).__name__}")


__all__ = ["CUSTOM_PIPELINES", "FashionBlip2Config", "PRESETS", "MATCHING_MODES"]
