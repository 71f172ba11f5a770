"""Evaluation during training: the options checked against the data before step 1, then `facap_eval.evaluate`
(the protocol `eval_cir.py` runs) sharded over the run's processes, and the score that picks `best/`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from facap_eval import Protocol, Runtime
from facap_eval import evaluate as evaluate_cir
from facap_eval.data import dropped_note, plan_configs


@dataclass(frozen=True)
class EvaluationPlan:
    """What training-time evaluation runs, fixed before step 1. The protocol drops, per gallery, the cut-offs
    it cannot answer (K above its size); `notes` say which, and every result records them."""

    dataset: str
    configs: tuple[str, ...]
    protocol: Protocol
    batch_size: int
    notes: tuple[str, ...]


def plan_evaluation(args: argparse.Namespace) -> EvaluationPlan | None:
    """Check every evaluation option against the eval data (configs, galleries, split, cut-offs) without
    encoding anything; None with --no-eval. Raises the evaluation's own errors, naming the culprit."""
    if not args.eval:
        return None
    dataset = args.eval_dataset or args.dataset[0]
    configs = tuple(args.eval_configs or args.configs)
    protocol = Protocol(split=args.eval_split, caption_join=args.caption_join, k_values=tuple(args.eval_k_values),
                        k_above_gallery="drop")
    _, planned = plan_configs(dataset, configs, protocol, predictions=False)
    notes = tuple(f"note: evaluation of {dataset}: {dropped_note(name, data.dropped_k_values, len(data.gallery_ids))}"
                  for name, data in planned.items() if data.dropped_k_values)
    return EvaluationPlan(dataset, configs, protocol, args.eval_batch_size, notes)


def evaluate(accelerator, model, processor, plan: EvaluationPlan) -> dict | None:
    """The evaluation protocol on every process (each encodes its slice of every gallery and query set; the main
    process ranks); returns the results dict on the main process and None elsewhere.

    Training randomness is forked around it, so evaluating (or not) never changes the batches, dropout masks or
    a resumed run's course."""
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return evaluate_cir(accelerator.unwrap_model(model), processor, plan.dataset, list(plan.configs), plan.protocol,
                            Runtime(batch_size=plan.batch_size, progress=False, accelerator=accelerator))


def eval_record(results: dict) -> dict[str, Any]:
    """The recall figures worth logging from a results dict (and the cut-offs dropped, when any)."""
    record: dict[str, Any] = {"eval/average": results["average"]}
    for config, values in results["configs"].items():
        record[f"eval/{config}"] = {k: v for k, v in values.items() if k.startswith("recall")}
    dropped = {c: ks for c, ks in (results.get("protocol", {}).get("dropped_k_values") or {}).items() if ks}
    if dropped:
        record["eval/dropped_k_values"] = dropped
    return record


def selection_metric(average: Mapping[str, float | None]) -> float:
    """The protocol's headline (Fashion IQ: (R@10 + R@50) / 2), or the mean of all cut-offs when it was not
    computed (e.g. R@50 dropped for a small gallery)."""
    if average.get("mean") is not None:
        return average["mean"]
    recalls = [value for key, value in average.items() if key.startswith("recall")]
    return sum(recalls) / len(recalls)
