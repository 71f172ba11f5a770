"""Publishing: a model card with `model-index` results and a push through the project's one upload path.

- `model_card` builds the card: YAML metadata generated with huggingface_hub's `ModelCardData` /
  `EvalResult` (one result per metric, config and evaluation), and a body with the architecture, base model or
  preset, training data, hyper-parameters, library versions, the evaluation tables and a usage snippet;
- `write_card` writes it into a saved folder, `update_card` merges one more evaluation into an existing card
  (replacing an earlier one of the same dataset and split) and keeps everything else;
- `push_folder` uploads a saved folder (weights, config with `auto_map`, remote code, processor, README.md) in
  one commit through `facap_io.hub.upload`; `push_to_hub` saves a model + processor first.

Not part of the remote code (it uses `facap_io`).
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from facap_io.atomic import write_text
from facap_io.errors import FacapError
from facap_io.hub import PushError, check_repo_id, upload

from .pipeline_fashionblip2 import PIPELINE_TASK

TASK_TYPE = "composed-image-retrieval"
TASK_NAME = "Composed Image Retrieval"
CARD_TAGS = ["fashion", "composed-image-retrieval", "blip-2", "fashionblip2", "custom_code"]
CARD_NAME = "README.md"
HEADLINE_METRIC = "mean_recall"  # metric_type of the results' `average.mean`
RECALL_KEY = re.compile(r"^recall@(\d+)$")
# The evaluation section is regenerated from the card's `model-index` between these markers.
EVAL_START, EVAL_END = "<!-- evaluation:start -->", "<!-- evaluation:end -->"
# `training` keys rendered under "Training data"; every other key is a hyper-parameter.
DATA_KEYS = ("dataset", "datasets", "configs", "splits", "num_triplets", "triplets", "caption_augmentation")
LIBRARIES = ("torch", "transformers", "huggingface_hub", "peft", "accelerate", "datasets")
# What a saved model folder holds at least (model + processor); anything less is not pushed.
REQUIRED_FILES = ("config.json", "model.safetensors")


class CardError(FacapError):
    """A model card that cannot be built or updated (no card to update, results of the wrong shape)."""


@dataclass(frozen=True)
class CardEvaluation:
    """One evaluation to show on the card.

    dataset_name: display name ("Fashion IQ"); dataset_id: folder name or Hub id (the model-index dataset type);
    split: evaluated split; results: an evaluation `results.json` dict, `{"protocol": {...}, "configs":
    {config: {"recall@K": value, ...}}, "average": {"recall@K": value, ..., "mean": value}}`.
    """

    dataset_name: str
    dataset_id: str
    split: str
    results: dict


# ---------------------------------------------------------------------------------------------------- metadata
def eval_results(evaluation: CardEvaluation) -> list[EvalResult]:
    """One `EvalResult` per recall@K of every config, per averaged recall@K, and the headline mean."""
    configs = evaluation.results.get("configs") if isinstance(evaluation.results, Mapping) else None
    if not isinstance(configs, Mapping) or not configs:
        raise CardError(
            f"results for {evaluation.dataset_id} ({evaluation.split}) have no 'configs'; expected an evaluation "
            "results.json"
        )
    common = {
        "task_type": TASK_TYPE,
        "task_name": TASK_NAME,
        "dataset_type": evaluation.dataset_id,
        "dataset_name": evaluation.dataset_name,
        "dataset_split": evaluation.split,
    }
    results = []
    for config, metrics in configs.items():
        for key, k, value in _recalls(metrics):
            results.append(EvalResult(**common, dataset_config=config, metric_type=key, metric_name=f"Recall@{k}",
                                      metric_value=value))
    average = evaluation.results.get("average") or {}
    for key, k, value in _recalls(average):
        results.append(EvalResult(**common, metric_type=key, metric_name=f"Recall@{k} (average over configs)",
                                  metric_value=value))
    if isinstance(average.get("mean"), (int, float)):
        results.append(EvalResult(**common, metric_type=HEADLINE_METRIC, metric_name=_headline_name(evaluation),
                                  metric_value=average["mean"]))
    return results


def _recalls(metrics: Mapping) -> list[tuple[str, int, float]]:
    found = []
    for key, value in metrics.items():
        match = RECALL_KEY.match(key)
        if match and isinstance(value, (int, float)):
            found.append((key, int(match.group(1)), float(value)))
    return sorted(found, key=lambda item: item[1])


def _headline_name(evaluation: CardEvaluation) -> str:
    headline_k = (evaluation.results.get("protocol") or {}).get("headline_k")
    if headline_k:
        return "Mean of " + " and ".join(f"R@{k}" for k in headline_k)
    return "Headline mean recall"


def _card_data(name: str, base_model: str | None, results: list[EvalResult], datasets) -> ModelCardData:
    # No pipeline_tag: none of the Hub's tasks fits (image-feature-extraction would need a reference and a text);
    # the custom "composed-image-retrieval" pipeline is documented in the card instead.
    return ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=CARD_TAGS,
        datasets=sorted(set(datasets)) or None,
        base_model=base_model,
        model_name=name,
        eval_results=results or None,
    )


# ---------------------------------------------------------------------------------------------------- body
def parameter_counts(model) -> dict[str, int]:
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "vision": sum(p.numel() for p in model.vision_model.parameters()),
    }


def _architecture_section(model, base_model: str | None) -> str:
    config = model.config
    counts = parameter_counts(model)
    vision, qformer = config.vision_config, config.qformer_config
    adapters = f"{len(config.adapted_layers)} layers, width {config.adapter_dim}" if config.adapted_layers else "off"
    matching = (
        f"multi-head: TokenMix {config.num_query_tokens}->{config.num_heads} tokens, ChannelMix "
        f"{qformer.hidden_size}->{config.head_dim} channels, embedding size {config.embedding_dim}"
        if config.matching == "multihead"
        else f"max (BLIP-2 ITC style), embedding size {config.image_text_hidden_size} per query token"
    )
    encoder = (
        f"ViT, {vision.num_hidden_layers} layers, width {vision.hidden_size}, {vision.image_size} px, "
        f"patch {vision.patch_size}, {'frozen' if config.freeze_vision else 'trained'}"
    )
    qformer_text = (
        f"{qformer.num_hidden_layers} layers, width {qformer.hidden_size}, {config.num_query_tokens} queries, "
        f"cross-attention every {qformer.cross_attention_frequency} layer(s)"
    )
    rows = [
        ("preset", config.preset or "none (converted or custom)"),
        ("base model", base_model or "random initialisation"),
        ("image encoder", encoder),
        ("adapters", adapters),
        ("Q-Former", qformer_text),
        ("matching", matching),
        ("max text length", f"{config.max_text_length} tokens"),
        ("parameters", f"{counts['total']:,} total, {counts['trainable']:,} trainable, "
                       f"{counts['vision']:,} in the image encoder"),
    ]
    return "## Architecture\n\n" + _table(("part", "value"), rows)


def _training_sections(training: Mapping[str, Any] | None) -> str:
    if not training:
        return "## Training data\n\nNot recorded.\n"
    data = [(key, _cell(value)) for key, value in training.items() if key in DATA_KEYS]
    hyper = [(key, _cell(value)) for key, value in training.items() if key not in DATA_KEYS]
    parts = ["## Training data\n\n" + (_table(("item", "value"), data) if data else "Not recorded.\n")]
    if hyper:
        parts.append("## Hyper-parameters\n\n" + _table(("name", "value"), hyper))
    return "\n".join(parts)


def _versions_section() -> str:
    rows = [("python", platform.python_version())]
    for library in LIBRARIES:
        try:
            rows.append((library, metadata.version(library)))
        except metadata.PackageNotFoundError:
            continue
    return "## Library versions\n\n" + _table(("library", "version"), rows)


def _evaluation_section(results: Sequence[EvalResult]) -> str:
    """One table per evaluated dataset and split (rows: configs and their average), rebuilt from the metadata."""
    if not results:
        return f"{EVAL_START}\n## Evaluation\n\nNot evaluated yet.\n{EVAL_END}"
    groups: dict[tuple, list[EvalResult]] = {}
    for result in results:
        groups.setdefault((result.dataset_name, result.dataset_type, result.dataset_split), []).append(result)
    parts = [EVAL_START, "## Evaluation", ""]
    for (name, dataset_id, split), group in groups.items():
        parts += [_dataset_table(name, dataset_id, split, group), ""]
    parts.append(EVAL_END)
    return "\n".join(parts)


def _dataset_table(name: str, dataset_id: str, split: str, group: list[EvalResult]) -> str:
    recalls = sorted({r.metric_type for r in group if RECALL_KEY.match(r.metric_type)},
                     key=lambda key: int(RECALL_KEY.match(key).group(1)))
    rows: dict[str, dict[str, float]] = {}
    for result in group:
        if result.metric_type in recalls:
            rows.setdefault(result.dataset_config or "average", {})[result.metric_type] = result.metric_value
    header = ("config", *(key.replace("recall@", "R@") for key in recalls))
    table = _table(header, [(row, *(_number(values.get(k)) for k in recalls)) for row, values in rows.items()])
    lines = [f"### {name} (`{dataset_id}`, {split} split)", "", table]
    for result in group:
        if result.metric_type == HEADLINE_METRIC:
            lines.append(f"{result.metric_name}: **{result.metric_value:.2f}**")
    return "\n".join(lines)


def _usage_section(name: str) -> str:
    return f"""## Usage

The model ships its own code (`trust_remote_code=True`). Embeddings are unit vectors and the score is their dot
product, so the gallery can live in any inner-product index.

```python
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{name}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{name}", trust_remote_code=True)
query = processor(images=[Image.open("reference.jpg")], text=["is red with long sleeves"])
gallery = processor(images=[Image.open(p) for p in ["a.jpg", "b.jpg"]])
with torch.no_grad():
    q = model.get_query_embeddings(query["pixel_values"], query["input_ids"], query["attention_mask"])
    c = model.get_candidate_embeddings(gallery["pixel_values"])
scores = model.score(q, c)  # (1, 2); for multi-head matching this is q @ c.T
```

With the `{PIPELINE_TASK}` pipeline saved next to the weights:

```python
from transformers import pipeline

retrieve = pipeline("{PIPELINE_TASK}", model="{name}", trust_remote_code=True)
query_embedding = retrieve({{"image": Image.open("reference.jpg"), "text": "is red with long sleeves"}})
candidate_embedding = retrieve(Image.open("a.jpg"))
gallery = [Image.open(p) for p in ["a.jpg", "b.jpg", "c.jpg"]]
top = retrieve({{"image": Image.open("reference.jpg"), "text": "is red"}}, gallery=gallery, top_k=2)
# [{{"id": 1, "score": 0.83}}, {{"id": 0, "score": 0.41}}]; gallery may also be an index with search(queries, k)
```
"""


def _intro(model) -> str:
    preset = f" ({model.config.preset} preset)" if model.config.preset else ""
    return f"""# FashionBLIP-2{preset}

Fashion composed image retrieval: a reference image plus a modification text ("is red with long sleeves")
retrieves the target product. BLIP-2's vision tower and Q-Former (transformers' own BLIP-2 modules) with bottleneck
adapters in the image encoder and multi-head query-candidate matching.
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {item}" for key, item in value.items())
    return str(value)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ---------------------------------------------------------------------------------------------------- cards
def model_card(
    model,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    training: Mapping[str, Any] | None = None,
    evaluations: Sequence[CardEvaluation] = (),
) -> ModelCard:
    """The card of `model` (a FashionBlip2Model). `base_model` defaults to the Hub id the model was converted
    from (`config.name_or_path` when it is not a local folder); `training` holds free-form rows (datasets,
    configs, num_triplets, steps, batch size, learning rates, ...); each evaluation adds `model-index` results."""
    if base_model is None:
        source = model.config.name_or_path
        base_model = source if source and not os.path.exists(source) and "/" in source else None
    results = [result for evaluation in evaluations for result in eval_results(evaluation)]
    name = repo_id or "path/to/this/folder"
    datasets = [e.dataset_id for e in evaluations if "/" in e.dataset_id and not os.path.exists(e.dataset_id)]
    data = _card_data(repo_id or "FashionBLIP-2", base_model, results, datasets)
    body = "\n".join([
        _intro(model),
        _architecture_section(model, base_model),
        _training_sections(training),
        _versions_section(),
        _evaluation_section(results),
        "",
        _usage_section(name),
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_card(folder: str | os.PathLike, model, **card_options) -> Path:
    """Write `model_card(model, **card_options)` to `folder/README.md` atomically; returns its path."""
    return write_text(Path(folder) / CARD_NAME, str(model_card(model, **card_options)))


def update_card(folder: str | os.PathLike, evaluation: CardEvaluation) -> Path:
    """Merge `evaluation` into `folder/README.md`: its results replace those of the same dataset and split, the
    other evaluations and the rest of the card stay; the evaluation section is rebuilt from the merged results."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        raise CardError(f"{path} does not exist; write the card first (the trainer writes one with the model)")
    card = ModelCard.load(path)
    new = eval_results(evaluation)
    kept = [
        r for r in card.data.eval_results or []
        if (r.dataset_type, r.dataset_split) != (evaluation.dataset_id, evaluation.split)
    ]
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or "FashionBLIP-2"
    section = _evaluation_section(card.data.eval_results)
    if EVAL_START in card.text and EVAL_END in card.text:
        before, rest = card.text.split(EVAL_START, 1)
        text = before + section + rest.split(EVAL_END, 1)[1]
    else:
        text = card.text.rstrip() + "\n\n" + section + "\n"
    updated = ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}")
    return write_text(path, str(updated))


# ---------------------------------------------------------------------------------------------------- push
def save_for_hub(model, processor, folder: str | os.PathLike, **card_options) -> Path:
    """Write exactly what `push_to_hub` uploads: model (safetensors, config with auto_map, remote code), processor
    and README.md model card."""
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_card(folder, model, **card_options)
    return folder


def folder_files(folder: str | os.PathLike) -> list[str]:
    """The files a push uploads: every file under `folder` (relative paths), hidden ones excepted; refused when
    the folder is not a saved model."""
    root = Path(folder)
    if not root.is_dir():
        raise PushError(f"cannot push {root}: not a folder")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise PushError(f"cannot push {root}: not a saved model (no {', '.join(missing)})")
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or path.is_dir():
            continue
        files.append(relative.as_posix())
    return files


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str | None = None,
    api=None,
) -> str:
    """Upload a saved folder (weights, config, remote code, processor, README.md) to the model repo `repo_id` in
    one commit; returns the commit URL. Repo id, token and files are checked before anything is sent."""
    files = folder_files(folder)
    message = commit_message or f"Upload FashionBLIP-2 model from {Path(folder).name}"
    return upload(folder, files, repo_id, repo_type="model", commit_message=message, private=private, api=api)


def push_to_hub(
    model,
    processor,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str | None = None,
    api=None,
    **card_options,
) -> str:
    """Save model + processor + card into a temporary folder and `push_folder` it; returns the commit URL."""
    check_repo_id(repo_id)  # before the save: a typo costs nothing
    with tempfile.TemporaryDirectory() as folder:
        save_for_hub(model, processor, folder, repo_id=repo_id, **card_options)
        message = commit_message or "Upload FashionBLIP-2 model, processor and card"
        return push_folder(folder, repo_id, private=private, commit_message=message, api=api)


__all__ = [
    "CardError",
    "CardEvaluation",
    "eval_results",
    "model_card",
    "parameter_counts",
    "push_folder",
    "push_to_hub",
    "save_for_hub",
    "update_card",
    "write_card",
]
