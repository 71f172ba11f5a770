"""Query latency of the search demo (app.py / facap_app) with the `demo`-preset model on CPU.

    python benchmarks/bench_app.py [--model DIR] [--dataset DIR] [--queries 50]

Without --model/--dataset it builds a random `demo`-preset model (latency does not depend on the weights)
and the default synthetic set (64 px) in a temporary folder. It times what one "Search" click costs the
server: preprocessing, the query branch of the model and the index search (`SearchEngine.search`), for
composed and image-only queries, against the bare model forward on already-preprocessed tensors (the
baseline, measured in the same run). Last stdout line: one JSON object, headline `query_latency_ms_p50`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from facap_app.catalogue import category_of
from facap_app.options import parse_args
from facap_app.startup import create_app

TEXTS = ("is red with long sleeves", "make it striped and shorter", "has a v neck", "is navy and sleeveless")


def build_defaults(folder: Path) -> tuple[Path, Path]:
    from facap_dataset.synthetic import build_synthetic
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model, FashionBlip2Processor

    print("building the synthetic set and a random demo-preset model...", file=sys.stderr)
    dataset = build_synthetic(folder / "synthetic")
    config = FashionBlip2Config.from_preset("demo")
    processor = FashionBlip2Processor.from_texts(
        TEXTS,
        image_size=config.vision_config.image_size,
        max_text_length=config.max_text_length,
        vocab_size=config.qformer_config.vocab_size,
    )
    torch.manual_seed(0)
    FashionBlip2Model(config).save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder / "model", dataset


def bare_forward(engine, image, text) -> float:
    """Seconds of the model's query branch alone, on inputs preprocessed beforehand (the baseline)."""
    inputs = engine.processor(images=[image], text=[text], return_tensors="pt")
    with torch.inference_mode():
        start = time.perf_counter()
        engine.model.get_query_embeddings(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
        return time.perf_counter() - start


def percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "p50": round(1000 * statistics.median(ordered), 2),
        "p90": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--dataset")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--config", default="dress-gallery")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir, dataset = (options.model, options.dataset) if options.model else build_defaults(scratch)
        args = parse_args(
            ["--model", str(model_dir), "--dataset", str(dataset), "--config", options.config,
             "--device", "cpu", "--cache-dir", str(scratch / "cache")]
        )  # fmt: skip
        started = time.perf_counter()
        _, engine = create_app(args, scratch / "files")
        startup = time.perf_counter() - started
        category = category_of(options.config)
        catalogue = engine.catalogues[category]
        references = [catalogue.image(row) for row in range(min(10, len(catalogue.ids)))]
        queries = [(references[i % len(references)], TEXTS[i % len(TEXTS)]) for i in range(options.queries)]

        engine.search(*queries[0], category, 10)  # warm-up
        # Interleaved, so that a change of load on the machine hits all three series alike.
        composed, image_only, bare = [], [], []
        for image, text in queries:
            composed.append(engine.search(image, text, category, 10).seconds)
            image_only.append(engine.search(image, "", category, 10).seconds)
            bare.append(bare_forward(engine, image, text))
    result = {
        "query_latency_ms_p50": percentiles(composed)["p50"],
        "query_latency_ms_p90": percentiles(composed)["p90"],
        "image_only_latency_ms_p50": percentiles(image_only)["p50"],
        "baseline_bare_forward_ms_p50": percentiles(bare)["p50"],
        "gallery_size": len(catalogue.ids),
        "startup_s_with_index_build": round(startup, 2),
        "queries": options.queries,
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
