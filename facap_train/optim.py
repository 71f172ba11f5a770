"""How long a run is and how it steps: the run plan, AdamW's parameter groups, the schedule, one optimizer step."""

from __future__ import annotations

import argparse
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import get_cosine_schedule_with_warmup

from facap_dataset.errors import DataError

from .errors import NonFiniteLossError, TrainingError

# Parameter-name fragments of the parts trained with --adapter-learning-rate: the vision adapters and the
# matching head (TokenMix/ChannelMix). Everything else trainable (Q-Former, query tokens, temperature) uses
# --learning-rate.
ADAPTER_PARAMETER_KEYS = ("adapter", "token_mix", "channel_mix")
# Parameters exempt from weight decay, as in BERT/BLIP-2 recipes: biases, norms, learned tokens, temperature.
NO_DECAY_KEYS = ("bias", "layernorm", "layer_norm", "norm.weight", "query_tokens", "temperature", "logit_scale")


@dataclass(frozen=True)
class RunPlan:
    """Values derived from the arguments and the data; the arguments themselves are never changed."""

    num_processes: int
    train_size: int
    batches_per_epoch: int  # per process
    global_batch_size: int  # examples per optimizer step, all processes and accumulation included
    total_steps: int
    warmup_steps: int
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 0.0  # 0 = no clipping


def plan_run(args: argparse.Namespace, train_size: int, num_processes: int) -> RunPlan:
    per_step = args.batch_size * num_processes
    if per_step > train_size:
        raise DataError(
            f"--batch-size {args.batch_size} x {num_processes} process(es) = {per_step} exceeds the "
            f"{train_size} training triplets"
        )
    batches_per_epoch = train_size // per_step
    if args.max_steps is not None:
        total_steps = args.max_steps
    else:
        epochs = args.num_epochs if args.num_epochs is not None else 1.0
        total_steps = max(1, math.ceil(epochs * batches_per_epoch / args.gradient_accumulation_steps))
    warmup = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * total_steps)
    return RunPlan(
        num_processes=num_processes,
        train_size=train_size,
        batches_per_epoch=batches_per_epoch,
        global_batch_size=per_step * args.gradient_accumulation_steps,
        total_steps=total_steps,
        warmup_steps=min(warmup, total_steps),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_grad_norm=args.max_grad_norm,
    )


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW with four groups: {adapters+mixers, the rest} x {weight decay, none}."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lowered = name.lower()
        is_adapter = any(key in lowered for key in ADAPTER_PARAMETER_KEYS)
        decays = parameter.ndim >= 2 and not any(key in lowered for key in NO_DECAY_KEYS)
        groups.setdefault((is_adapter, decays), []).append(parameter)
    if not groups:
        raise TrainingError("the model has no trainable parameters")
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": args.adapter_learning_rate if is_adapter else args.learning_rate,
                "weight_decay": args.weight_decay if decays else 0.0,
                "name": f"{'adapters' if is_adapter else 'qformer'}{'' if decays else '-no-decay'}",
            }
            for (is_adapter, decays), params in sorted(groups.items())
        ]
    )


def build_scheduler(optimizer: torch.optim.Optimizer, plan: RunPlan):
    """Linear warm-up then cosine decay to zero over the run's optimizer steps."""
    return get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)


def optimizer_step(accelerator, model, optimizer, scheduler, batches: Iterator[dict], plan: RunPlan, step: int) -> float:
    """One optimizer step over the plan's accumulation batches; returns the mean loss of all processes.

    Raises NonFiniteLossError before the gradients are applied when the loss is NaN or infinite."""
    accumulation = plan.gradient_accumulation_steps
    total = torch.zeros((), device=accelerator.device)
    for micro in range(accumulation):
        batch = next(batches)
        # Only the last micro-batch all-reduces gradients across processes.
        context = accelerator.no_sync(model) if micro < accumulation - 1 else nullcontext()
        with context:
            loss = model(**batch, return_loss=True).loss
            accelerator.backward(loss / accumulation)
        total += loss.detach().float()
    mean_loss = accelerator.reduce(total / accumulation, reduction="mean").item()
    if not math.isfinite(mean_loss):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"the loss is {mean_loss} at step {step}")
    if plan.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), plan.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss
