"""Publishing: a saved folder (weights, config with `auto_map`, remote code, processor) plus a generated model card,
uploaded with `huggingface_hub`. Not part of the remote code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

RECALL_KEYS = ("recall@1", "recall@5", "recall@10", "recall@50")
CARD_TAGS = ["fashion", "composed-image-retrieval", "blip-2", "fashionblip2", "custom_code"]


def parameter_counts(model) -> dict[str, int]:
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "vision": sum(p.numel() for p in model.vision_model.parameters()),
    }


def _results_table(results: Mapping) -> str:
    """Markdown table of an `eval_cir` results.json (`configs` + `average`), or of flat name -> value pairs."""
    if "configs" not in results:
        rows = [f"| {name} | {value} |" for name, value in results.items() if not isinstance(value, Mapping)]
        return "\n".join(["| metric | value |", "| --- | --- |", *rows])
    header = "| split | " + " | ".join(k.replace("recall@", "R@") for k in RECALL_KEYS) + " |"
    lines = [header, "|" + " --- |" * (len(RECALL_KEYS) + 1)]
    named = {**results["configs"], **({"average": results["average"]} if "average" in results else {})}
    for name, values in named.items():
        cells = [f"{values[k]:.2f}" if isinstance(values.get(k), (int, float)) else "-" for k in RECALL_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "average" in results and "mean" in results["average"]:
        lines.append(f"\nMean of R@10 and R@50 over the categories: **{results['average']['mean']:.2f}**")
    return "\n".join(lines)


def model_card(
    model,
    *,
    repo_id: str | None = None,
    training_data: str | None = None,
    results: Mapping | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
) -> ModelCard:
    """A model card: architecture, preset, parameter counts, training data and results (when known), usage."""
    config = model.config
    counts = parameter_counts(model)
    base = config.name_or_path if config.name_or_path and not os.path.isdir(config.name_or_path) else None
    data = ModelCardData(
        library_name="transformers",
        license=license,
        tags=CARD_TAGS,
        datasets=datasets,
        base_model=base,
        pipeline_tag="image-feature-extraction",
    )
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
    name = repo_id or "path/to/this/folder"
    body = f"""
# FashionBLIP-2{f" ({config.preset} preset)" if config.preset else ""}

Fashion composed image retrieval: a reference image plus a modification text ("is red with long sleeves")
retrieves the target product. BLIP-2's vision tower and Q-Former (transformers' own BLIP-2 modules) with bottleneck
adapters in the image encoder and multi-head query-candidate matching; the score is a plain dot product of
unit vectors, so the gallery can live in any inner-product index.

## Architecture

| part | value |
| --- | --- |
| preset | {config.preset or "none (converted or custom)"} |
| base model | {base or "random initialisation"} |
| image encoder | {encoder} |
| adapters | {adapters} |
| Q-Former | {qformer_text} |
| matching | {matching} |
| max text length | {config.max_text_length} tokens |
| parameters | {counts["total"]:,} total, {counts["trainable"]:,} trainable, {counts["vision"]:,} in the image encoder |

## Training data

{training_data or "Not recorded."}

## Results

{_results_table(results) if results else "Not evaluated yet."}

## Usage

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
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def save_for_hub(model, processor, folder: str | os.PathLike, **card_options) -> Path:
    """Write exactly what `push_to_hub` uploads: model (safetensors, config with auto_map, remote code), processor
    and README.md model card."""
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    model_card(model, **card_options).save(folder / "README.md")
    return folder


def push_to_hub(
    model,
    processor,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload FashionBLIP-2 model, processor and card",
    api: HfApi | None = None,
    **card_options,
) -> str:
    """Create (or reuse) the model repo and upload model + processor + card in one commit; returns the commit
    URL. The token comes from the argument or the environment (`HF_TOKEN`), never from files of ours."""
    api = api or HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save_for_hub(model, processor, folder, repo_id=repo.repo_id, **card_options)
        commit = api.upload_folder(
            folder_path=folder, repo_id=repo.repo_id, repo_type="model", commit_message=commit_message
        )
    return str(getattr(commit, "commit_url", commit))


__all__ = ["model_card", "parameter_counts", "push_to_hub", "save_for_hub"]
