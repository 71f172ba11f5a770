"""The model card written into `best/` and `final/`, and `--push-to-hub`.

The card itself (YAML `model-index` built with huggingface_hub's `ModelCardData`/`EvalResult`, architecture,
versions, usage) is the model package's (`modeling_fashionblip2.hub.write_card`); the trainer supplies what
only it knows: the base model or preset, the training data and hyper-parameters, and its evaluation.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from facap_io.hub import check_repo_id, check_token
from modeling_fashionblip2 import PRESETS
from modeling_fashionblip2.hub import CardEvaluation, push_folder, write_card

from .optim import RunPlan


def check_push(args: argparse.Namespace, api=None) -> None:
    """Before step 1: a malformed repo id or a missing token is one PushError line, not a lost push at the end."""
    if args.push_to_hub is None:
        return
    check_repo_id(args.push_to_hub)
    if api is None:  # a given client carries its own credentials
        check_token()


def base_model(args: argparse.Namespace) -> str | None:
    """The Hub id the run started from, for the card's `base_model` (None for presets and local folders)."""
    if args.model is None or args.model in PRESETS or Path(args.model).exists():
        return None
    return args.model


def training_facts(args: argparse.Namespace, plan: RunPlan, sources: tuple[str, ...], steps: int) -> dict[str, Any]:
    """The card's "Training data" and "Hyper-parameters" rows."""
    start = (f"preset {args.model}" if args.model in PRESETS else args.model) if args.init_from is None \
        else f"fine-tuned from {args.init_from}"
    return {
        "datasets": list(args.dataset),
        "configs": list(args.configs),
        "num_triplets": plan.train_size,
        "triplets": "; ".join(sources),
        "caption_augmentation": args.caption_augmentation,
        "start": start,
        "steps": steps,
        "global_batch_size": plan.global_batch_size,
        "processes": plan.num_processes,
        "learning_rate": args.learning_rate,
        "adapter_learning_rate": args.adapter_learning_rate,
        "weight_decay": args.weight_decay,
        "warmup_steps": plan.warmup_steps,
        "schedule": "linear warm-up, cosine decay",
        "max_grad_norm": args.max_grad_norm or "off",
        "mixed_precision": args.mixed_precision or "accelerate default",
        "hard_negatives": args.hard_negatives,
        "seed": args.seed,
    }


def write_model_card(folder: Path, model, args: argparse.Namespace, training: dict[str, Any], results: dict | None) -> Path:
    """README.md of a saved model folder, with the evaluation `results` (training-time protocol) when given."""
    evaluations = ()
    if results is not None:
        dataset = args.eval_dataset or args.dataset[0]
        evaluations = (CardEvaluation(dataset_name=Path(dataset).name or dataset, dataset_id=dataset,
                                      split=args.eval_split, results=results),)
    return write_card(folder, model, repo_id=args.push_to_hub, base_model=base_model(args), training=training,
                      evaluations=evaluations)


def push_run(output_dir: Path, args: argparse.Namespace, steps: int, api=None) -> str:
    """Upload best/ (else final/) with its card to --push-to-hub; returns the commit URL. A refused push is one
    PushError; the local folders are never touched."""
    folder = output_dir / "best" if (output_dir / "best").is_dir() else output_dir / "final"
    message = f"FashionBLIP-2 {folder.name}/ after {steps} training steps (train_accelerate.py)"
    return push_folder(folder, args.push_to_hub, private=args.hub_private, commit_message=message, api=api)
