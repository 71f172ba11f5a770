"""FashionBLIP-2: BLIP-2's vision tower (frozen, with bottleneck adapters) and Q-Former, shared by a query branch
(reference image + modification text) and a candidate branch (target image), compared by multi-head matching.

Remote-code rule (DESIGN 4.3): copied next to saved weights and imported as a dynamic module, so it imports only
torch, transformers, safetensors, huggingface_hub, the standard library and flat siblings (`from .x import Y`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings, Blip2VisionModel
from transformers.utils import ModelOutput, logging

from .configuration_fashionblip2 import FashionBlip2Config

logger = logging.get_logger(__name__)

# BLIP-2 retrieval tensors that FashionBLIP-2 never uses: the ITM classifier (always) and, in multi-head mode,
# the ITC text projection (the candidate-side ITC projection seeds ChannelMix instead, see `from_blip2`).
BLIP2_ITM_HEAD_PREFIX = "itm_head."
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TEMPERATURE_RANGE = (1e-3, 0.5)  # LAVIS' clamp: keeps the learnable temperature from collapsing or exploding


class CheckpointError(ValueError):
    """A checkpoint given to `from_blip2` is not a usable BLIP-2 retrieval checkpoint."""


@dataclass
class FashionBlip2Output(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
        InfoNCE loss of the queries against all (gathered) candidates.
    logits_per_query (`torch.FloatTensor` of shape `(batch_size, num_candidates)`, *optional*):
        Scores divided by the temperature; `num_candidates` is the global batch when training distributed, plus
        the gathered references when the loss adds them as negatives (`config.reference_negatives`), plus the
        gathered `negative_pixel_values`.
    query_embeds (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`):
        Unit-norm query embeddings.
    candidate_embeds (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`, or `(batch_size,
        num_query_tokens, embedding_dim)` when `matching="max"`, *optional*):
        Unit-norm candidate embeddings (per query token for `max`).
    """

    loss: torch.FloatTensor | None = None
    logits_per_query: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    candidate_embeds: torch.FloatTensor | None = None


class ZeroInitLinear(nn.Linear):
    """A linear layer that `_init_weights` starts at zero (an adapter's up-projection)."""


class BottleneckAdapter(nn.Module):
    """Residual bottleneck `h + up(act(down(h)))`; `up` starts at zero so the adapted layer starts as the original."""

    def __init__(self, width: int, bottleneck: int, act: str):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = ACT2FN[act]
        self.up = ZeroInitLinear(bottleneck, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.up(self.act(self.down(hidden_states)))


class MultiHeadMatching(nn.Module):
    """TokenMix (n_q -> n_t along tokens) then ChannelMix (d_q -> d_c along channels); each of the n_t rows is
    L2-normalised and the rows are flattened and scaled by 1/sqrt(n_t), so that the mean row-wise cosine of a query
    and a candidate is the dot product of their flat vectors (retrieval = one inner-product search)."""

    def __init__(self, num_query_tokens: int, num_heads: int, hidden_size: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.token_mix = nn.Linear(num_query_tokens, num_heads)
        self.channel_mix = nn.Linear(hidden_size, head_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` of shape `(batch_size, n_q, d_q)` -> unit vectors of shape `(batch_size, n_t * d_c)`."""
        tokens = tokens.to(self.token_mix.weight.dtype)
        rows = self.token_mix(tokens.transpose(1, 2)).transpose(1, 2)
        rows = F.normalize(self.channel_mix(rows), dim=-1)
        return rows.flatten(1) / math.sqrt(self.num_heads)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each process the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size = torch.distributed.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)  # every process's loss depends on every slice
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather `features` along dim 0 across processes, keeping the autograd graph (unlike
    `accelerator.gather`); returns the gathered tensor and this process's rank. Local batch sizes must be equal."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return features, 0
    if torch.distributed.get_world_size() == 1:
        return features, 0
    return _AllGatherWithGrad.apply(features), torch.distributed.get_rank()


class ContrastiveLoss(nn.Module):
    """InfoNCE of local queries against the candidates of every process; query i's positive is candidate
    `i + n * rank`. Labels are cached per (device, size, rank)."""

    def __init__(self):
        super().__init__()
        self._labels: dict[tuple, torch.Tensor] = {}

    def labels(self, num_local: int, rank: int, device: torch.device) -> torch.Tensor:
        key = (device, num_local, rank)
        if key not in self._labels:
            self._labels[key] = torch.arange(num_local, device=device) + num_local * rank
        return self._labels[key]

    def forward(self, logits_per_query: torch.Tensor, rank: int) -> torch.Tensor:
        labels = self.labels(logits_per_query.shape[0], rank, logits_per_query.device)
        return F.cross_entropy(logits_per_query.float(), labels)


class FashionBlip2PreTrainedModel(PreTrainedModel):
    config: FashionBlip2Config
    config_class = FashionBlip2Config
    base_model_prefix = "fashionblip2"
    main_input_name = "reference_pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_attention_backend = True
    _supports_sdpa = True
    _supports_flash_attn = False  # BLIP-2's Q-Former is kept in fp32, which rules out Flash Attention
    _supports_flex_attn = True
    _keep_in_fp32_modules = ["query_tokens", "qformer"]
    _no_split_modules = [
        "Blip2Attention",
        "Blip2QFormerMultiHeadAttention",
        "Blip2EncoderLayer",
        "Blip2TextEmbeddings",
        "Blip2VisionEmbeddings",
    ]

    def _init_weights(self, module):
        """Also covers our own parameters and the text embeddings' `position_ids` buffer, which transformers 5
        builds on the meta device (without the reset a reloaded model fails with an IndexError)."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, FashionBlip2Model):
            # Random, not zero: the queries have no position embedding, so equal queries would stay equal forever.
            init.normal_(module.query_tokens, mean=0.0, std=std)
            init.constant_(module.temperature, self.config.temperature_init)
        elif isinstance(module, Blip2TextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, ZeroInitLinear):
            # Matched on the layer, not the adapter: transformers skips parameter-less modules of remote code.
            init.zeros_(module.weight)
            init.zeros_(module.bias)


class FashionBlip2Model(FashionBlip2PreTrainedModel):
    """Composed image retrieval model. Submodules keep BLIP-2's names (`vision_model`, `qformer`, `embeddings`,
    `query_tokens`, and for `matching="max"` `vision_projection` / `text_projection`) so weights map one to one."""

    def __init__(self, config: FashionBlip2Config):
        super().__init__(config)
        qformer_width = config.qformer_config.hidden_size
        self.vision_model = Blip2VisionModel._from_config(config.vision_config)
        self.adapters = nn.ModuleDict(
            {
                str(layer): BottleneckAdapter(config.vision_config.hidden_size, config.adapter_dim, config.adapter_act)
                for layer in config.adapted_layers
            }
        )
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_width))
        self.embeddings = Blip2TextEmbeddings(config.qformer_config)
        self.qformer = Blip2QFormerModel._from_config(config.qformer_config)
        if config.matching == "multihead":
            self.matching_head = MultiHeadMatching(
                config.num_query_tokens, config.num_heads, qformer_width, config.head_dim
            )
        else:
            self.vision_projection = nn.Linear(qformer_width, config.image_text_hidden_size)
            self.text_projection = nn.Linear(qformer_width, config.image_text_hidden_size)
        self.temperature = nn.Parameter(torch.tensor(float(config.temperature_init)))
        self.loss_fn = ContrastiveLoss()
        self.post_init()
        if config.freeze_vision:
            self.vision_model.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------ checks
    def _check_pixel_values(self, pixel_values: torch.Tensor, name: str) -> None:
        size = self.config.vision_config.image_size
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"{name} has shape {tuple(pixel_values.shape)}; expected (batch_size, 3, {size}, {size}) "
                "as made by this model's processor"
            )

    def _check_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; expected (batch_size, sequence_length)")
        if input_ids.shape[1] > self.config.max_text_length:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens, more than max_text_length="
                f"{self.config.max_text_length}; let the processor truncate (it does by default)"
            )
        vocab_size = self.config.qformer_config.vocab_size
        outside = input_ids[(input_ids < 0) | (input_ids >= vocab_size)]
        if outside.numel():
            raise ValueError(
                f"input_ids holds id {int(outside[0])} outside the vocabulary of {vocab_size}; "
                "the tokenizer does not belong to this model"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}"
            )

    # ------------------------------------------------------------------------------------------------ encoders
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tokens of shape `(batch_size, num_patches + 1, vision_hidden_size)`: BLIP-2's ViT with an
        adapter after each adapted layer (equal to `Blip2VisionModel(...).last_hidden_state` at init)."""
        self._check_pixel_values(pixel_values, "pixel_values")
        vision = self.vision_model
        hidden_states = vision.embeddings(pixel_values)
        for index, layer in enumerate(vision.encoder.layers):
            hidden_states = layer(hidden_states)
            if str(index) in self.adapters:
                hidden_states = self.adapters[str(index)](hidden_states)
        return vision.post_layernorm(hidden_states)

    def encode_query(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Query branch: queries and text tokens share self-attention, the queries cross-attend to the reference
        image (BLIP-2's ITM pass). Returns Q-Former states of shape `(batch_size, n_q + sequence_length, d_q)`."""
        self._check_text(input_ids, attention_mask)
        return self._query_states(self.get_image_features(pixel_values), input_ids, attention_mask)

    def encode_candidate(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Candidate branch: queries only, cross-attending to the image (BLIP-2's ITC image pass). Returns
        Q-Former states of shape `(batch_size, n_q, d_q)`."""
        return self._candidate_states(self.get_image_features(pixel_values))

    def _query_states(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if input_ids.shape[0] != image_embeds.shape[0]:
            raise ValueError(
                f"batch sizes differ: {image_embeds.shape[0]} reference images but {input_ids.shape[0]} texts"
            )
        query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        query_mask = torch.ones(query_tokens.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        outputs = self.qformer(
            query_embeds=self.embeddings(input_ids=input_ids, query_embeds=query_tokens),
            query_length=query_tokens.shape[1],
            attention_mask=torch.cat([query_mask, attention_mask], dim=1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self._image_mask(image_embeds),
        )
        return outputs.last_hidden_state

    def _candidate_states(self, image_embeds: torch.Tensor) -> torch.Tensor:
        outputs = self.qformer(
            query_embeds=self.query_tokens.expand(image_embeds.shape[0], -1, -1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self._image_mask(image_embeds),
        )
        return outputs.last_hidden_state

    @staticmethod
    def _image_mask(image_embeds: torch.Tensor) -> torch.Tensor:
        return torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)

    # ------------------------------------------------------------------------------------------------ embeddings
    def get_query_embeddings(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unit-norm query embeddings of shape `(batch_size, embedding_dim)`. `multihead`: matching head over
        the n_q query outputs; `max`: ITC text projection of the fused text [CLS] output (SPRC style)."""
        return self._embed_query(self.encode_query(pixel_values, input_ids, attention_mask))

    def get_candidate_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unit-norm candidate embeddings: `(batch_size, embedding_dim)` for `multihead`, `(batch_size, n_q,
        embedding_dim)` for `max` (BLIP-2's ITC image embeddings, one per query token)."""
        return self._embed_candidate(self.encode_candidate(pixel_values))

    def _embed_query(self, states: torch.Tensor) -> torch.Tensor:
        num_queries = self.config.num_query_tokens
        if self.config.matching == "multihead":
            return self.matching_head(states[:, :num_queries])
        cls_state = states[:, num_queries].to(self.text_projection.weight.dtype)
        return F.normalize(self.text_projection(cls_state), dim=-1)

    def _embed_candidate(self, states: torch.Tensor) -> torch.Tensor:
        if self.config.matching == "multihead":
            return self.matching_head(states)
        return F.normalize(self.vision_projection(states.to(self.vision_projection.weight.dtype)), dim=-1)

    def score(self, query_embeds: torch.Tensor, candidate_embeds: torch.Tensor) -> torch.Tensor:
        """Similarity of shape `(num_queries, num_candidates)`: `q @ c.T` for `multihead`; for `max`, the best
        query token of each candidate (BLIP-2's ITC similarity)."""
        if self.config.matching == "multihead":
            return query_embeds @ candidate_embeds.to(query_embeds.dtype).T
        return torch.einsum("qd,ckd->qck", query_embeds, candidate_embeds.to(query_embeds.dtype)).amax(dim=-1)

    def forward(
        self,
        reference_pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        target_pixel_values: torch.Tensor | None = None,
        negative_pixel_values: torch.Tensor | None = None,
        return_loss: bool = False,
        **kwargs,
    ) -> FashionBlip2Output:
        r"""
        reference_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, image_size, image_size)`):
            Reference images.
        input_ids, attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Modification texts, at most `config.max_text_length` tokens.
        target_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, image_size, image_size)`, *optional*):
            Target images; needed for `logits_per_query` and the loss.
        negative_pixel_values (`torch.FloatTensor` of shape `(num_negatives, 3, image_size, image_size)`, *optional*):
            Extra candidates that match no query (e.g. hard negatives of the triplets), scored after the targets
            (and references); needs `target_pixel_values`. Every process must pass the same `num_negatives`.
        return_loss (`bool`): compute the in-batch InfoNCE loss (negatives gathered across processes).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        self._check_pixel_values(reference_pixel_values, "reference_pixel_values")
        if target_pixel_values is not None:
            self._check_pixel_values(target_pixel_values, "target_pixel_values")
        if negative_pixel_values is not None:
            self._check_pixel_values(negative_pixel_values, "negative_pixel_values")
            if target_pixel_values is None:
                raise ValueError("negative_pixel_values needs target_pixel_values: negatives only add candidates")
        batch_size = reference_pixel_values.shape[0]
        if target_pixel_values is not None and target_pixel_values.shape[0] != batch_size:
            raise ValueError(
                f"batch sizes differ: {batch_size} reference images but {target_pixel_values.shape[0]} targets"
            )
        if return_loss and target_pixel_values is None:
            raise ValueError("return_loss=True needs target_pixel_values")
        if target_pixel_values is None:
            query_embeds = self.get_query_embeddings(reference_pixel_values, input_ids, attention_mask)
            return FashionBlip2Output(query_embeds=query_embeds)
        self._check_text(input_ids, attention_mask)
        # One vision pass over all images, one candidate pass over all candidates: fewer kernel launches.
        negatives = [] if negative_pixel_values is None else [negative_pixel_values]
        image_embeds = self.get_image_features(torch.cat([reference_pixel_values, target_pixel_values, *negatives]))
        reference_embeds, candidate_images = image_embeds[:batch_size], [image_embeds[batch_size:]]
        if return_loss and self.config.reference_negatives:
            candidate_images.append(reference_embeds)
        query_embeds = self._embed_query(self._query_states(reference_embeds, input_ids, attention_mask))
        candidates = self._embed_candidate(self._candidate_states(torch.cat(candidate_images)))
        candidate_embeds = candidates[:batch_size]
        # Targets and the extra candidates (negatives, references) are gathered apart, so every process's targets
        # come first and the positives' labels stay arange(n) + n * rank.
        parts = candidates.split([batch_size, len(candidates) - batch_size])
        gathered = [gather_with_grad(part) if return_loss else (part, 0) for part in parts if len(part)]
        all_candidates, rank = torch.cat([part for part, _ in gathered]), gathered[0][1]
        temperature = self.temperature.clamp(*TEMPERATURE_RANGE)
        logits_per_query = self.score(query_embeds, all_candidates) / temperature
        loss = self.loss_fn(logits_per_query, rank) if return_loss else None
        return FashionBlip2Output(
            loss=loss, logits_per_query=logits_per_query, query_embeds=query_embeds, candidate_embeds=candidate_embeds
        )

    # ------------------------------------------------------------------------------------------------ conversion
    @classmethod
    def from_blip2(
        cls,
        path_or_id: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        output_loading_info: bool = False,
        **overrides,
    ):
        """Convert a transformers `Blip2ForImageTextRetrieval` checkpoint (e.g. `Salesforce/blip2-itm-vit-g`)
        exactly: vision tower, Q-Former, text embeddings and query tokens are copied one to one. `matching="max"`
        keeps both ITC projections; `multihead` seeds ChannelMix with the ITC vision projection when the widths
        agree. Only new parts (adapters, TokenMix, temperature, ...) start fresh; they are logged (and returned
        with `output_loading_info=True`). The ITM head is dropped. Any other unknown tensor is an error.
        `overrides` set config fields (`vision_config` / `qformer_config` dicts merge into BLIP-2's)."""
        folder = _resolve_checkpoint(path_or_id, revision=revision, token=token)
        config = _config_from_blip2(folder, str(path_or_id), overrides)
        blip2_state = _read_safetensors(folder, str(path_or_id))
        model = cls(config)
        state, info = _map_blip2_state(blip2_state, model, str(path_or_id))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatch: the overrides changed the architecture
            raise CheckpointError(f"{path_or_id}: weights do not fit the config: {error}") from None
        if unexpected:
            raise CheckpointError(f"{path_or_id}: unexpected tensors {sorted(unexpected)[:5]}")
        info["missing_keys"] = sorted(missing)
        logger.info("from_blip2(%s): new parameters start fresh: %s", path_or_id, ", ".join(info["missing_keys"]))
        model.config.name_or_path = str(path_or_id)
        model.eval()
        return (model, info) if output_loading_info else model


# ---------------------------------------------------------------------------------------------------- conversion
def _resolve_checkpoint(path_or_id, *, revision=None, token=None) -> str:
    if os.path.isdir(path_or_id):
        return str(path_or_id)
    from huggingface_hub import snapshot_download

    return snapshot_download(
        str(path_or_id), revision=revision, token=token, allow_patterns=["*.json", "*.safetensors"]
    )


def _config_from_blip2(folder: str, name: str, overrides: dict) -> FashionBlip2Config:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{name} has no config.json; expected a Blip2ForImageTextRetrieval checkpoint")
    with open(config_path, encoding="utf-8") as handle:
        blip2 = json.load(handle)
    if blip2.get("model_type") != "blip-2":
        raise CheckpointError(
            f"{name} is a {blip2.get('model_type')!r} checkpoint, not BLIP-2 (model_type 'blip-2'); "
            "expected a Blip2ForImageTextRetrieval checkpoint such as Salesforce/blip2-itm-vit-g"
        )
    qformer = dict(blip2.get("qformer_config") or {})
    if not qformer.get("use_qformer_text_input", False):
        raise CheckpointError(
            f"{name} has qformer_config.use_qformer_text_input=False: its Q-Former has no text layers or text "
            "embeddings (a generation checkpoint?); expected a Blip2ForImageTextRetrieval checkpoint"
        )
    vision = dict(blip2.get("vision_config") or {})
    for sub in (vision, qformer):
        for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
            sub.pop(key, None)
    vision.update(overrides.pop("vision_config", None) or {})
    qformer.update(overrides.pop("qformer_config", None) or {})
    fields = {
        "num_query_tokens": blip2.get("num_query_tokens", 32),
        "image_text_hidden_size": blip2.get("image_text_hidden_size", 256),
        # d_c = the ITC width, so that ChannelMix can start from BLIP-2's ITC vision projection.
        "head_dim": blip2.get("image_text_hidden_size", 256),
        "freeze_vision": True,
        "max_text_length": min(64, qformer.get("max_position_embeddings", 512)),
    }
    fields.update(overrides)
    return FashionBlip2Config(vision_config=vision, qformer_config=qformer, **fields)


def _read_safetensors(folder: str, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index_path = os.path.join(folder, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        shards = [WEIGHTS_NAME]
    else:
        raise CheckpointError(f"{name} has no {WEIGHTS_NAME} (only safetensors weights are loaded, never pickle)")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(os.path.join(folder, shard)))
    return state


def _map_blip2_state(
    blip2_state: dict[str, torch.Tensor], model: FashionBlip2Model, name: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """Rename BLIP-2 tensors to ours; raise if a BLIP-2 part we need is absent or an unknown tensor is present."""
    ours = set(model.state_dict())
    mapped: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    seed_channel_mix = model.config.matching == "multihead" and (
        model.config.head_dim == model.config.image_text_hidden_size
    )
    for key, tensor in blip2_state.items():
        target = key
        if key.startswith(BLIP2_ITM_HEAD_PREFIX):
            dropped.append(key)
            continue
        if model.config.matching == "multihead" and key.startswith(("vision_projection.", "text_projection.")):
            if key.startswith("text_projection.") or not seed_channel_mix:
                dropped.append(key)
                continue
            target = "matching_head.channel_mix." + key.split(".", 1)[1]
            renamed[key] = target
        if target in ours:
            mapped[target] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{name} holds {len(unknown)} tensors that are not part of a BLIP-2 retrieval model, e.g. "
            f"{', '.join(sorted(unknown)[:5])}; expected a Blip2ForImageTextRetrieval checkpoint"
        )
    required = [key for key in ours if key.split(".", 1)[0] in ("vision_model", "qformer", "embeddings")]
    required += ["query_tokens"] + [key for key in ours if key.startswith(("vision_projection.", "text_projection."))]
    absent = sorted(key for key in required if key not in mapped)
    if absent:
        raise CheckpointError(
            f"{name} is not a BLIP-2 retrieval checkpoint: it lacks {len(absent)} tensors, e.g. "
            f"{', '.join(absent[:5])}"
        )
    return mapped, {"renamed_keys": renamed, "dropped_keys": sorted(dropped)}


__all__ = [
    "CheckpointError",
    "ContrastiveLoss",
    "FashionBlip2Model",
    "FashionBlip2Output",
    "FashionBlip2PreTrainedModel",
    "gather_with_grad",
]
