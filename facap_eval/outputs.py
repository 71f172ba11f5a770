"""What an evaluation writes besides results.json: Fashion IQ-format prediction files and the console table."""

from __future__ import annotations

import os
from pathlib import Path

from facap_io.atomic import write_json
from facap_io.paths import inside, plain_name
from facap_retrieval.ranking import Ranking

from .protocol import CIRR_SUBSET_K_VALUES, PREDICTION_TOP_K, metric_key


def prediction_file_name(config: str, split: str) -> str:
    return f"cap.{config}.{split}.predictions.json"


def write_predictions(folder: str | os.PathLike, split: str, data, ranking: Ranking) -> Path:
    """One Fashion IQ caption file for `data` (a `ConfigData`): each entry with an added `ranking` of the
    top-50 gallery ids (the target, when known, ordered after the items it ties with)."""
    triplets = data.triplets.select_columns(["reference_id", "target_id", "captions"])
    entries = []
    for triplet, row in zip(triplets, ranking.indices[:, :PREDICTION_TOP_K].tolist()):
        entry = {"candidate": triplet["reference_id"], "captions": triplet["captions"]}
        if triplet["target_id"] is not None:
            entry["target"] = triplet["target_id"]
        entry["ranking"] = [data.gallery_ids[i] for i in row]
        entries.append(entry)
    name = prediction_file_name(plain_name(data.name, what="config"), plain_name(split, what="split"))
    return write_json(inside(folder, name, what="prediction file"), entries)


def _cell(value, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:{width}.2f}" if isinstance(value, float) else str(value).rjust(width)


def format_results_table(results: dict) -> str:
    """A plain-text table: recall per config, their average, the headline and the protocol choices."""
    protocol = results["protocol"]
    columns = [(metric_key("recall", k), f"R@{k}") for k in protocol["k_values"]]
    if protocol.get("subset_k_values"):
        columns += [(metric_key("recall_subset", k), f"Rs@{k}") for k in CIRR_SUBSET_K_VALUES]
    header = ["config".ljust(12)] + [title.rjust(7) for _, title in columns] + ["gallery".rjust(8), "queries".rjust(8)]
    lines = [" ".join(header)]
    for name, metrics in results["configs"].items():
        cells = [_cell(metrics.get(key), 7) for key, _ in columns]
        sizes = [_cell(metrics["gallery_size"], 8), _cell(metrics["num_queries"], 8)]
        lines.append(" ".join([name.ljust(12), *cells, *sizes]))
    average = results["average"]
    if average is not None:
        lines.append(" ".join(["average".ljust(12)] + [_cell(average.get(key), 7) for key, _ in columns]))
        if average.get("mean") is not None:
            lines.append(f"headline {protocol['headline']}: {average['mean']:.2f}")
    lines.extend(f"note: {note}" for note in protocol.get("notes", ()))
    lines.append(
        f"protocol: benchmark={protocol['benchmark']} split={protocol['split']} mode={protocol['query_mode']} "
        f"caption_join={protocol['caption_join']} exclude_reference={protocol['exclude_reference']} "
        f"missing_targets={sum(protocol['missing_targets'].values())} ties={protocol['ties']}"
    )
    return "\n".join(lines)
