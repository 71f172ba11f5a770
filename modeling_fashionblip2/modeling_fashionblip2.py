"""FashionBLIP-2: BLIP-2's vision tower (frozen, with bottleneck adapters) and Q-Former, shared by a query branch
(reference image + modification text) and a candidate branch (target image), compared by multi-head matching.

Remote-code rule: this file is copied next to saved weights and imported by transformers as a dynamic module (on a
machine without this package), so it imports only torch, transformers, safetensors, huggingface_hub, the standard
library and flat siblings (`from .x import Y`); transformers copies exactly those siblings.
"""

from __future__ import annotations

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
from .convert import ConversionError, convert_blip2
# Imported so that `save_pretrained` copies the pipeline next to the weights (the config's `custom_pipelines`
# names it): transformers copies the flat siblings a remote-code file imports.
from .pipeline_fashionblip2 import ComposedImageRetrievalPipeline

logger = logging.get_logger(__name__)

TEMPERATURE_RANGE = (1e-3, 0.5)  # LAVIS' clamp: keeps the learnable temperature from collapsing or exploding


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


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All-gather `features` of shape `(n, ...)` along dim 0 across processes, keeping the autograd graph (unlike
    `accelerator.gather`): `(world_size * n, ...)`, every process's slice in rank order. Local sizes must be equal.
    Without `torch.distributed` (or with one process) `features` is returned as is."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return features
    if torch.distributed.get_world_size() == 1:
        return features
    return _AllGatherWithGrad.apply(features)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def score_embeddings(query_embeds: torch.Tensor, candidate_embeds: torch.Tensor, matching: str) -> torch.Tensor:
    """Similarity of shape `(num_queries, num_candidates)`. `multihead`: `q @ c.T` (queries `(Q, D)`, candidates
    `(C, D)`); `max`: the best query token of each candidate `(C, n_q, D)` (BLIP-2's ITC similarity)."""
    if matching == "multihead":
        return query_embeds @ candidate_embeds.to(query_embeds.dtype).T
    return torch.einsum("qd,ckd->qck", query_embeds, candidate_embeds.to(query_embeds.dtype)).amax(dim=-1)


class ContrastiveLoss(nn.Module):
    """In-batch InfoNCE of the local queries against the candidates of every process, as open_clip's `ClipLoss`:
    targets (and extra candidates) are gathered with an autograd-aware all-gather, query i's positive is gathered
    candidate `i + n * rank`, and those labels are cached per device.

    Candidates are ordered: every process's targets, then every process's extra candidates (hard negatives,
    references), so the positives' labels do not depend on how many extras there are."""

    def __init__(self, matching: str):
        super().__init__()
        self.matching = matching
        self._labels: dict[tuple, torch.Tensor] = {}

    def get_labels(self, num_local: int, device: torch.device) -> torch.Tensor:
        """`arange(num_local) + num_local * rank`, cached per (device, size, rank)."""
        rank = _rank()
        key = (device, num_local, rank)
        if key not in self._labels:
            self._labels[key] = torch.arange(num_local, device=device) + num_local * rank
        return self._labels[key]

    def forward(
        self,
        query_embeds: torch.Tensor,
        target_embeds: torch.Tensor,
        extra_candidates: torch.Tensor | None,
        temperature: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries `(n, D)`, targets `(n, D)` (or `(n, n_q, D)` for `max`), extra candidates `(m, ...)` or None
        (every process must pass the same `m`), scalar temperature. Returns the loss (shape `()`) and the logits
        of shape `(n, world_size * (n + m))`."""
        candidates = [gather_with_grad(target_embeds)]
        if extra_candidates is not None and len(extra_candidates):
            candidates.append(gather_with_grad(extra_candidates))
        logits = score_embeddings(query_embeds, torch.cat(candidates), self.matching) / temperature
        labels = self.get_labels(query_embeds.shape[0], logits.device)
        return F.cross_entropy(logits.float(), labels), logits


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
    `query_tokens`, and for `matching="max"` `vision_projection` / `text_projection`) so weights map one to one.

    Encoders, one naming scheme from pixels to embeddings: `get_vision_tokens` (ViT + adapters) ->
    `get_query_states` / `get_candidate_states` (Q-Former outputs) -> `get_query_embeddings` /
    `get_candidate_embeddings` (unit-norm rows) -> `score`."""

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
        self.loss_fn = ContrastiveLoss(config.matching)
        self.post_init()
        if config.freeze_vision:
            self.vision_model.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------ checks
    def _check_pixel_values(self, pixel_values: torch.Tensor, name: str, interpolate_pos_encoding: bool) -> None:
        size = self.config.vision_config.image_size
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(pixel_values).__name__}")
        if interpolate_pos_encoding:  # any height and width: the position embeddings are interpolated to them
            if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
                raise ValueError(
                    f"{name} has shape {tuple(pixel_values.shape)}; expected (batch_size, 3, height, width)"
                )
            return
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"{name} has shape {tuple(pixel_values.shape)}; expected (batch_size, 3, {size}, {size}) "
                "as made by this model's processor (or pass interpolate_pos_encoding=True for other sizes)"
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
    def get_vision_tokens(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Vision tokens of shape `(batch_size, num_patches + 1, vision_hidden_size)`: BLIP-2's ViT with an adapter
        after each adapted layer (equal to `Blip2VisionModel(...).last_hidden_state` at init).
        `interpolate_pos_encoding=True` accepts any image size, as `Blip2VisionModel` does."""
        self._check_pixel_values(pixel_values, "pixel_values", interpolate_pos_encoding)
        vision = self.vision_model
        hidden_states = vision.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        for index, layer in enumerate(vision.encoder.layers):
            hidden_states = layer(hidden_states)
            if str(index) in self.adapters:
                hidden_states = self.adapters[str(index)](hidden_states)
        return vision.post_layernorm(hidden_states)

    def get_query_states(
        self, vision_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Query branch on the reference image's `vision_tokens`: queries and text tokens share self-attention,
        the queries cross-attend to the image (BLIP-2's ITM pass). Returns Q-Former states of shape
        `(batch_size, n_q + sequence_length, d_q)`."""
        self._check_text(input_ids, attention_mask)
        if input_ids.shape[0] != vision_tokens.shape[0]:
            raise ValueError(
                f"batch sizes differ: {vision_tokens.shape[0]} reference images but {input_ids.shape[0]} texts"
            )
        query_tokens = self.query_tokens.expand(vision_tokens.shape[0], -1, -1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        query_mask = torch.ones(query_tokens.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        outputs = self.qformer(
            query_embeds=self.embeddings(input_ids=input_ids, query_embeds=query_tokens),
            query_length=query_tokens.shape[1],
            attention_mask=torch.cat([query_mask, attention_mask], dim=1),
            encoder_hidden_states=vision_tokens,
            encoder_attention_mask=self._image_mask(vision_tokens),
        )
        return outputs.last_hidden_state

    def get_candidate_states(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """Candidate branch on an image's `vision_tokens`: queries only, cross-attending to the image (BLIP-2's
        ITC image pass). Returns Q-Former states of shape `(batch_size, n_q, d_q)`."""
        outputs = self.qformer(
            query_embeds=self.query_tokens.expand(vision_tokens.shape[0], -1, -1),
            encoder_hidden_states=vision_tokens,
            encoder_attention_mask=self._image_mask(vision_tokens),
        )
        return outputs.last_hidden_state

    @staticmethod
    def _image_mask(vision_tokens: torch.Tensor) -> torch.Tensor:
        return torch.ones(vision_tokens.shape[:-1], dtype=torch.long, device=vision_tokens.device)

    def _query_head(self, query_states: torch.Tensor) -> torch.Tensor:
        num_queries = self.config.num_query_tokens
        if self.config.matching == "multihead":
            return self.matching_head(query_states[:, :num_queries])
        cls_state = query_states[:, num_queries].to(self.text_projection.weight.dtype)
        return F.normalize(self.text_projection(cls_state), dim=-1)

    def _candidate_head(self, candidate_states: torch.Tensor) -> torch.Tensor:
        if self.config.matching == "multihead":
            return self.matching_head(candidate_states)
        states = candidate_states.to(self.vision_projection.weight.dtype)
        return F.normalize(self.vision_projection(states), dim=-1)

    # ------------------------------------------------------------------------------------------------ embeddings
    def get_query_embeddings(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Unit-norm query embeddings of shape `(batch_size, embedding_dim)`. `multihead`: matching head over
        the n_q query outputs; `max`: ITC text projection of the fused text [CLS] output (SPRC style)."""
        vision_tokens = self.get_vision_tokens(pixel_values, interpolate_pos_encoding)
        return self._query_head(self.get_query_states(vision_tokens, input_ids, attention_mask))

    def get_candidate_embeddings(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """Unit-norm candidate embeddings: `(batch_size, embedding_dim)` for `multihead`, `(batch_size, n_q,
        embedding_dim)` for `max` (BLIP-2's ITC image embeddings, one per query token)."""
        vision_tokens = self.get_vision_tokens(pixel_values, interpolate_pos_encoding)
        return self._candidate_head(self.get_candidate_states(vision_tokens))

    def score(self, query_embeds: torch.Tensor, candidate_embeds: torch.Tensor) -> torch.Tensor:
        """Similarity of shape `(num_queries, num_candidates)`: `q @ c.T` for `multihead`; for `max`, the best
        query token of each candidate (BLIP-2's ITC similarity)."""
        return score_embeddings(query_embeds, candidate_embeds, self.config.matching)

    def forward(
        self,
        reference_pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        target_pixel_values: torch.Tensor | None = None,
        negative_pixel_values: torch.Tensor | None = None,
        return_loss: bool = False,
        interpolate_pos_encoding: bool = False,
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
        return_loss (`bool`): compute the in-batch InfoNCE loss (candidates gathered across processes).
        interpolate_pos_encoding (`bool`): accept images of another size than `vision_config.image_size`.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        interpolate = interpolate_pos_encoding
        self._check_pixel_values(reference_pixel_values, "reference_pixel_values", interpolate)
        if target_pixel_values is not None:
            self._check_pixel_values(target_pixel_values, "target_pixel_values", interpolate)
        if negative_pixel_values is not None:
            self._check_pixel_values(negative_pixel_values, "negative_pixel_values", interpolate)
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
            query_embeds = self.get_query_embeddings(reference_pixel_values, input_ids, attention_mask, interpolate)
            return FashionBlip2Output(query_embeds=query_embeds)
        self._check_text(input_ids, attention_mask)
        # One vision pass over all images, one candidate pass over all candidates: fewer kernel launches.
        negatives = [] if negative_pixel_values is None else [negative_pixel_values]
        vision_tokens = self.get_vision_tokens(
            torch.cat([reference_pixel_values, target_pixel_values, *negatives]), interpolate
        )
        reference_tokens, candidate_tokens = vision_tokens[:batch_size], [vision_tokens[batch_size:]]
        if return_loss and self.config.reference_negatives:
            candidate_tokens.append(reference_tokens)
        query_embeds = self._query_head(self.get_query_states(reference_tokens, input_ids, attention_mask))
        candidates = self._candidate_head(self.get_candidate_states(torch.cat(candidate_tokens)))
        target_embeds, extra_candidates = candidates[:batch_size], candidates[batch_size:]
        temperature = self.temperature.clamp(*TEMPERATURE_RANGE)
        if return_loss:
            loss, logits_per_query = self.loss_fn(query_embeds, target_embeds, extra_candidates, temperature)
        else:
            loss, logits_per_query = None, self.score(query_embeds, candidates) / temperature
        return FashionBlip2Output(
            loss=loss, logits_per_query=logits_per_query, query_embeds=query_embeds, candidate_embeds=target_embeds
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
        with `output_loading_info=True`). The ITM head is dropped. Any other unknown tensor is a `ConversionError`.
        `overrides` set config fields (`vision_config` / `qformer_config` dicts merge into BLIP-2's)."""
        model, info = convert_blip2(cls, path_or_id, revision=revision, token=token, **overrides)
        logger.info("from_blip2(%s): new parameters start fresh: %s", path_or_id, ", ".join(info["missing_keys"]))
        return (model, info) if output_loading_info else model


__all__ = [
    "ComposedImageRetrievalPipeline",
    "ContrastiveLoss",
    "ConversionError",
    "FashionBlip2Model",
    "FashionBlip2Output",
    "FashionBlip2PreTrainedModel",
    "gather_with_grad",
    "score_embeddings",
]
