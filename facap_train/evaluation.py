"""Evaluation during training: the options checked against the data before step 1, then the Fashion IQ
protocol of `eval_cir` on the validation split, and the score that picks `best/`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from facap_dataset.errors import DataError
from facap_dataset.loading import OpenedDataset, open_dataset
from facap_dataset.schema import gallery_config

# Fashion IQ's headline: the mean of R@10 and R@50 (averaged over the categories).
HEADLINE_K = (10, 50)


@dataclass(frozen=True)
class EvaluationPlan:
    """What training-time evaluation runs, fixed before step 1.

    `k_by_config` holds, per config, the asked cut-offs that its gallery can answer (K <= gallery size);
    the others are dropped for that gallery, noted in the log and recorded in every result."""

    dataset: OpenedDataset
    configs: tuple[str, ...]
    split: str
    k_values: tuple[int, ...]
    gallery_sizes: Mapping[str, int]
    batch_size: int
    caption_join: str
    k_by_config: Mapping[str, tuple[int, ...]] = field(init=False)

    def __post_init__(self):
        kept = {c: tuple(k for k in self.k_values if k <= self.gallery_sizes[c]) for c in self.configs}
        object.__setattr__(self, "k_by_config", kept)

    @property
    def dropped_k_values(self) -> dict[str, list[int]]:
        return {c: [k for k in self.k_values if k not in kept] for c, kept in self.k_by_config.items()
                if len(kept) < len(self.k_values)}

    def notes(self) -> list[str]:
        return [
            f"note: {self.dataset.name}:{gallery_config(c)} ({self.split}) has {self.gallery_sizes[c]} images: "
            f"recall@{', recall@'.join(map(str, dropped))} cannot be computed and is dropped for {c}"
            for c, dropped in self.dropped_k_values.items()
        ]


def plan_evaluation(args: argparse.Namespace) -> EvaluationPlan | None:
    """Check every evaluation option against the eval data (configs, galleries, split, sizes) without reading
    images; None with --no-eval. Raises DataError naming the culprit."""
    if not args.eval:
        return None
    dataset = open_dataset(args.eval_dataset or args.dataset[0])
    configs = tuple(args.eval_configs or args.configs)
    gallery_sizes = {}
    for config in configs:
        sizes = {part: _split_size(dataset, part, args.eval_split) for part in (config, gallery_config(config))}
        if 0 in sizes.values():
            raise DataError(f"cannot evaluate {dataset.name}:{config} ({args.eval_split}): "
                            + ", ".join(f"{part} has {n} rows" for part, n in sizes.items()))
        gallery_sizes[config] = sizes[gallery_config(config)]
    plan = EvaluationPlan(dataset, configs, args.eval_split, tuple(sorted(set(args.eval_k_values))), gallery_sizes,
                          args.eval_batch_size, args.caption_join)
    empty = [c for c, kept in plan.k_by_config.items() if not kept]
    if empty:
        raise DataError(f"--eval-k-values {','.join(map(str, plan.k_values))}: every cut-off exceeds the gallery of "
                        + ", ".join(f"{c} ({gallery_sizes[c]} images)" for c in empty))
    return plan


def _split_size(dataset: OpenedDataset, config: str, split: str) -> int:
    sizes = dataset.split_sizes(dataset.require(config))
    if sizes and split not in sizes:
        raise DataError(f"dataset {dataset.name}, config {config!r}: no split {split!r} (splits: {', '.join(sizes)})")
    if split not in sizes:  # a card without split sizes: count the rows
        return len(dataset.load_split(config, split))
    return sizes[split]


def evaluate(accelerator, model, processor, plan: EvaluationPlan) -> dict | None:
    """The Fashion IQ protocol (eval_cir) with each gallery's answerable cut-offs, on the main process while the
    others wait; returns the merged results dict there and None elsewhere.

    Training randomness is forked around it, so evaluating (or not) never changes the batches, dropout masks or
    a resumed run's course."""
    results = None
    if accelerator.is_main_process:
        import eval_cir

        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            per_config = {
                config: eval_cir.evaluate(
                    accelerator.unwrap_model(model), processor, plan.dataset.path, [config], split=plan.split,
                    batch_size=plan.batch_size, caption_join=plan.caption_join, k_values=plan.k_by_config[config],
                    progress=False,
                )
                for config in plan.configs
            }
        results = merge_results(per_config, plan)
    accelerator.wait_for_everyone()
    return results


def merge_results(per_config: Mapping[str, dict], plan: EvaluationPlan) -> dict:
    """One results dict from per-config runs: each config's recalls, the average over configs of the cut-offs
    every gallery answers, and the dropped cut-offs."""
    configs = {config: results["configs"][config] for config, results in per_config.items()}
    common = [k for k in plan.k_values if all(k in kept for kept in plan.k_by_config.values())]
    average: dict[str, float | None] = {
        f"recall@{k}": sum(m[f"recall@{k}"] for m in configs.values()) / len(configs) for k in common
    }
    headline = [f"recall@{k}" for k in HEADLINE_K]
    average["mean"] = sum(average[h] for h in headline) / len(headline) if all(h in average for h in headline) else None
    return {
        "configs": configs,
        "average": average,
        "protocol": {
            "dataset": plan.dataset.name,
            "split": plan.split,
            "caption_join": plan.caption_join,
            "k_values": list(plan.k_values),
            "k_values_by_config": {c: list(k) for c, k in plan.k_by_config.items()},
            "dropped_k_values": plan.dropped_k_values,
            "gallery_sizes": dict(plan.gallery_sizes),
        },
    }


def eval_record(results: dict) -> dict[str, Any]:
    """The recall figures worth logging from a results dict (and the cut-offs dropped, when any)."""
    record: dict[str, Any] = {"eval/average": results["average"]}
    for config, values in results["configs"].items():
        record[f"eval/{config}"] = {k: v for k, v in values.items() if k.startswith("recall@")}
    dropped = results.get("protocol", {}).get("dropped_k_values")
    if dropped:
        record["eval/dropped_k_values"] = dropped
    return record


def selection_metric(average: Mapping[str, float | None]) -> float:
    """Fashion IQ's headline (R@10 + R@50) / 2, or the mean of all cut-offs when it was not computed."""
    if average.get("mean") is not None:
        return average["mean"]
    recalls = [value for key, value in average.items() if key.startswith("recall@")]
    return sum(recalls) / len(recalls)
