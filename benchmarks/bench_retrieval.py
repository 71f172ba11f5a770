"""Retrieval benchmark (issue 6): our ranking + recall vs a bare `torch.topk(q @ g.T, 50)`, the FAISS
backends' recall vs exact search, and the peak memory of an `eval_cir` run on the synthetic set.

    python benchmarks/bench_retrieval.py [--gallery-size 100000] [--queries 2000] [--skip-memory]

Progress goes to stderr; the last stdout line is one JSON object whose headline is `ratio_vs_bare_topk`
(target <= 1.2): best-of-N time of `rank_gallery` (chunked inner product, top-k, pessimistic target ranks)
plus `recall_at_k`, divided by the best-of-N time of the bare top-k on the same vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from cir_index import CIRIndex, recall_vs_exact  # noqa: E402
from cir_ranking import DEFAULT_K_VALUES, rank_gallery, recall_at_k  # noqa: E402

TOP_K = 50
MiB = 2**20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def demo_dimension() -> int:
    from modeling_fashionblip2 import FashionBlip2Config

    return FashionBlip2Config.from_preset("demo").embedding_dim


def random_problem(gallery_size: int, num_queries: int, dim: int, clusters: int = 0, seed: int = 0):
    """Unit gallery vectors (uniform, or around `clusters` centres as real embeddings are), and queries that
    are noisy copies of their targets, so that recall is neither 0 nor 100."""
    generator = torch.Generator().manual_seed(seed)
    gallery = torch.randn(gallery_size, dim, generator=generator)
    if clusters:
        centres = torch.randn(clusters, dim, generator=generator)
        gallery = centres[torch.randint(0, clusters, (gallery_size,), generator=generator)] + 0.5 * gallery
    gallery = torch.nn.functional.normalize(gallery, dim=1)
    targets = torch.randint(0, gallery_size, (num_queries,), generator=generator)
    noise = torch.randn(num_queries, dim, generator=generator) / dim**0.5
    queries = torch.nn.functional.normalize(gallery[targets] + 3.0 * noise, dim=1)
    return gallery, queries, targets


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def ranking_speed(gallery, queries, targets, repeats: int) -> dict:
    def bare():
        torch.topk(queries @ gallery.T, TOP_K, dim=1)

    recalls = {}

    def ours():
        ranking = rank_gallery(queries, gallery, TOP_K, targets=targets)
        recalls.update(recall_at_k(ranking.target_ranks, DEFAULT_K_VALUES, max_rank=ranking.k))

    bare()  # warm-up: first-touch page faults and thread pools
    timings = {"bare": [], "ours": []}
    for _ in range(repeats):  # interleaved, so a noisy neighbour slows both alike
        timings["bare"].append(best_time(bare, 1))
        timings["ours"].append(best_time(ours, 1))
    bare_s, ours_s = min(timings["bare"]), min(timings["ours"])
    log(f"bare topk {bare_s:.3f} s, ours {ours_s:.3f} s (ratio {ours_s / bare_s:.3f}); recalls {recalls}")
    return {"bare_topk_s": round(bare_s, 4), "ours_s": round(ours_s, 4), "ratio_vs_bare_topk": round(ours_s / bare_s, 4),
            "synthetic_recall": {k: round(v, 2) for k, v in recalls.items()}}  # fmt: skip


def faiss_backends(size: int, num_queries: int, dim: int) -> dict:
    """Build time, search time and recall@50 vs exact of each backend on a clustered gallery of `size`."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        log("faiss not installed: skipping the FAISS backends")
        return {}
    subset, queries, _ = random_problem(size, num_queries, dim, clusters=max(1, size // 100), seed=1)
    ids = [str(i) for i in range(size)]
    report = {"gallery": f"{size} vectors around {max(1, size // 100)} cluster centres", "queries": num_queries}
    for backend in ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw"):
        start = time.perf_counter()
        index = CIRIndex.build(subset, ids, backend=backend)
        built = time.perf_counter() - start
        searched = best_time(lambda: index.search(queries, TOP_K), 2)
        recall = recall_vs_exact(index, queries, TOP_K)
        options = {"faiss-ivf": ("nlist", "nprobe"), "faiss-hnsw": ("hnsw_m", "ef_search")}.get(backend, ())
        report[backend] = {"build_s": round(built, 3), "search_s": round(searched, 4), "recall_vs_exact@50": round(recall, 4),
                           **{name: index.options[name] for name in options}}  # fmt: skip
        log(f"{backend}: build {built:.2f} s, search {searched:.3f} s, recall@50 vs exact {recall:.4f}")
    return report


# ---------------------------------------------------------------------------------------------------- memory
def _rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(model_dir: str, dataset_dir: str) -> None:
    """Run in a fresh process: evaluate, and print the peak-RSS growth during `evaluate` as JSON."""
    import datasets

    import eval_cir

    model, processor = eval_cir.load_model_and_processor(model_dir, "cpu")
    for config in datasets.get_dataset_config_names(dataset_dir):  # datasets' one-time Arrow conversion
        datasets.load_dataset(dataset_dir, config, split="validation")
    before_kib = _rss_peak_kib()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    reset_kib = _rss_peak_kib()
    results = eval_cir.evaluate(model, processor, dataset_dir, progress=False)
    peak_kib = _rss_peak_kib()
    print(json.dumps({"before_kib": before_kib, "reset_kib": reset_kib, "peak_kib": peak_kib,
                      "configs": results["configs"], "mean": results["average"]["mean"]}))  # fmt: skip


def eval_memory(work: Path, num_images: int) -> dict:
    from facap_dataset.synthetic import build_synthetic
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model, FashionBlip2Processor

    log(f"building a {num_images}-image synthetic set and a random demo model ...")
    dataset_dir = build_synthetic(work / "synthetic", num_images=num_images)
    config = FashionBlip2Config.from_preset("demo")
    model = FashionBlip2Model(config)
    processor = FashionBlip2Processor.from_texts(
        ["is red blue longer shorter with stripes sleeves darker lighter and"],
        image_size=config.vision_config.image_size,
        max_text_length=config.max_text_length,
    )
    model.save_pretrained(work / "model")
    processor.save_pretrained(work / "model")
    log("measuring eval_cir's peak memory in a fresh process ...")
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(work / "model"), str(dataset_dir)],
        capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    sizes = [(m["gallery_size"], m["num_queries"]) for m in measured["configs"].values()]
    embedding_bytes = sum(n + q for n, q in sizes) * config.embedding_dim * 4
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    token_cache_bytes = sum(n for n, _ in sizes) * tokens * vision.hidden_size * 4
    growth = (measured["peak_kib"] - measured["reset_kib"]) * 1024
    log(f"peak RSS growth during evaluate {growth / MiB:.1f} MiB; embeddings held {embedding_bytes / MiB:.2f} MiB; "
        f"a ViT token cache would add {token_cache_bytes / MiB:.1f} MiB")  # fmt: skip
    return {
        "synthetic_images": num_images,
        "gallery_images": sum(n for n, _ in sizes),
        "queries": sum(q for _, q in sizes),
        "eval_peak_rss_growth_mib": round(growth / MiB, 2),
        "embeddings_held_mib": round(embedding_bytes / MiB, 3),
        "vit_token_cache_would_be_mib": round(token_cache_bytes / MiB, 2),
        "demo_model_random_mean_recall": round(measured["mean"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery-size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--faiss-size", type=int, default=20_000, help="gallery size for the FAISS comparison")
    parser.add_argument("--faiss-queries", type=int, default=500)
    parser.add_argument("--synthetic-images", type=int, default=6000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL_DIR", "DATASET_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    dim = demo_dimension()
    log(f"gallery {args.gallery_size} x {dim}, {args.queries} queries, {torch.get_num_threads()} threads")
    gallery, queries, targets = random_problem(args.gallery_size, args.queries, dim)
    result = {"gallery_size": args.gallery_size, "queries": args.queries, "dim": dim, "k": TOP_K,
              "threads": torch.get_num_threads(), "device": "cpu"}  # fmt: skip
    result.update(ranking_speed(gallery, queries, targets, args.repeats))
    del gallery, queries
    result["faiss"] = faiss_backends(args.faiss_size, args.faiss_queries, dim)
    if not args.skip_memory:
        with tempfile.TemporaryDirectory(prefix="bench_retrieval_") as work:
            result["memory"] = eval_memory(Path(work), args.synthetic_images)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
