"""Index benchmark (issue 16): images/s of the index-build command with 1 vs 2 processes, and, for the FAISS
backends, recall@10/@50 against exact search and bytes per image at the `blip2-vit-g` preset's width.

    python benchmarks/bench_index.py [--sizes 100000,1000000] [--queries 200] [--backends faiss-ivfpq]
                                     [--nlist 256 --nprobe 256 --m 1024 --nbits 8 --rerank 20] [--skip-encoding]

Encoding: a synthetic set is built, a random `demo`-preset model saved, and `python -m facap_eval.build_index`
indexes its dress gallery once in one process and once under `accelerate launch --multi_gpu
--num_processes 2` (on CPU: gloo); images/s is what the command reports (gallery rows over the time spent
encoding and gathering). Reported, no target: the machine has 2 shared cores.

Recall@k against exact search is `facap_retrieval.index.recall_vs_exact`'s: the share of the exact top-k
list that the index's top k holds, averaged over the queries. The product-quantization literature's
"recall@R" (Jegou et al.: the share of queries whose exact nearest neighbour is among the R returned) is
reported next to it as `nn_recall_at_k`. IVF-PQ is measured as `python -m facap_eval.build_index --backend
faiss-ivfpq --rerank R` builds it: the codes pick a shortlist of R k candidates that the stored fp32
embeddings, memory-mapped from the index folder, re-score exactly; `--rerank-sweep` adds other R (0: codes
alone). Memory per image is the FAISS file (codes, ids, lists, codebooks: what `faiss.read_index` holds in
memory) over N, checked against the growth of the process's private resident memory when the saved index is
loaded and searched (`loaded_private_bytes_per_image`, Linux); the embeddings file stays on disk and only
shortlisted rows are read, so disk per image is reported apart. Exact fp32 search holds 4 D bytes per image in memory.

The gallery is N random unit vectors of width D (`blip2-vit-g`'s `embedding_dim`), generated in seeded
chunks and never held whole in fp32: each chunk is added to the index and scored against the queries (exact
top-k by chunked matmul, merged as it goes). Random vectors have no structure, so the query model is stated:
each query is a noisy copy of a gallery vector (`normalize(g + noise * n / sqrt(D))`; at the default
`--noise 3`, cos(query, target) is about 0.32), as a composed query lands near its target. Its target is the
exact top 1; the other exact top-k items are the tail of N random inner products, packed closely together:
ordering those needs a score error below 0.05 of their spread for 0.9 recall@50, about 4.3 bits a dimension,
more than the 4 that 1/8 of fp32 allows (docs/scaling.md), which is why the codes alone fall short and a
shortlist re-scored exactly does not. Inverted lists cannot help on such data either: those neighbours are
spread evenly over the lists, so recall grows with nprobe / nlist (the sweep shows it); on real, clustered
embeddings a small nprobe suffices (`bench_retrieval.py` measures a clustered gallery). Index training uses a
separately seeded sample of the same distribution, not gallery rows.

Progress goes to stderr; the last stdout line is one JSON object whose headline is
`ivfpq_recall_at_50_vs_exact` (target >= 0.9) with `ivfpq_bytes_per_image_vs_fp32` (target <= 1/8).
"""

from __future__ import annotations

import os

# FAISS's OpenMP threads spin while they wait; on cores shared with other processes that multiplies its run
# time several-fold (measured: 220 s instead of 18 s for one IVF-PQ training). Must be set before the
# OpenMP runtime loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from facap_io.lists import int_list, nonnegative_int_list  # noqa: E402
from facap_retrieval.index import FAISS_FILE, CIRIndex, IndexBuilder, IndexOptions, top_k_overlap  # noqa: E402

K_VALUES = (10, 50)
DEFAULT_NOISE = 3.0  # query = normalize(target + noise * n / sqrt(D)): cos(query, target) = 1 / sqrt(1 + noise**2)
HEADLINE_BACKEND = "faiss-ivfpq"
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
REPO = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def preset_width(preset: str) -> int:
    from modeling_fashionblip2 import FashionBlip2Config

    return FashionBlip2Config.from_preset(preset).embedding_dim


# ------------------------------------------------------------------------------------------ random problem
def _unit_chunk(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)


def gallery_chunks(size: int, dim: int, chunk: int, seed: int):
    """`(start, (n, D) unit rows)` for each seeded chunk of the gallery; the same seed gives the same gallery."""
    for number, start in enumerate(range(0, size, chunk)):
        yield start, _unit_chunk(min(chunk, size - start), dim, seed * 100_003 + number)


def noisy_queries(first_chunk: torch.Tensor, count: int, noise_scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` queries near gallery rows of the first chunk (rows are exchangeable: any chunk would do) and
    their target rows."""
    generator = torch.Generator().manual_seed(seed + 7)
    targets = torch.randperm(len(first_chunk), generator=generator)[:count]
    noise = torch.randn(count, first_chunk.shape[1], generator=generator) / first_chunk.shape[1] ** 0.5
    return torch.nn.functional.normalize(first_chunk[targets] + noise_scale * noise, dim=1), targets


class RunningTopK:
    """The exact top-k gallery rows of each query, merged chunk by chunk: `(Q, k)` indices."""

    def __init__(self, queries: torch.Tensor, k: int):
        self.queries, self.k = queries, k
        self.scores = torch.full((len(queries), 0), float("-inf"))
        self.indices = torch.zeros((len(queries), 0), dtype=torch.long)

    def add(self, start: int, rows: torch.Tensor) -> None:
        scores = self.queries @ rows.T
        best = torch.topk(scores, min(self.k, len(rows)), dim=1)
        merged = torch.cat([self.scores, best.values], dim=1)
        candidates = torch.cat([self.indices, best.indices + start], dim=1)
        keep = torch.topk(merged, min(self.k, merged.shape[1]), dim=1)
        self.scores, self.indices = keep.values, torch.gather(candidates, 1, keep.indices)


def nn_recall(found: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    """Recall@k as the product-quantization literature defines it: the share of queries whose exact nearest
    neighbour is among the k items found."""
    return (found[:, :k] == exact[:, :1]).any(dim=1).float().mean().item()


def faiss_size(size: int, dim: int, args, backends: list[str], work: Path) -> dict:
    """Build every backend over one streamed pass of a gallery of `size`, then measure recall and bytes."""
    log(f"--- {size:,} random unit vectors of width {dim}, {args.queries} queries, chunks of {args.chunk:,}")
    started = time.perf_counter()
    work.mkdir(parents=True)
    training = _unit_chunk(min(args.train_size, size), dim, seed=args.seed * 100_003 - 1)
    builders = {}
    for backend in backends:
        rerank = args.rerank if backend == HEADLINE_BACKEND else 0
        options = IndexOptions(backend, nlist=args.nlist, nprobe=args.nprobe, m=args.m, nbits=args.nbits, rerank=rerank)
        keep = backend == HEADLINE_BACKEND and max(args.rerank, *args.rerank_sweep) > 0
        builders[backend] = IndexBuilder(dim, options, size, keep_embeddings=keep, scratch_dir=work)
        tick = time.perf_counter()
        if builders[backend].needs_training:
            builders[backend].train(training)
        log(f"{backend}: trained on {len(training):,} vectors in {time.perf_counter() - tick:.1f} s")
    del training
    exact, queries, targets, add_s = None, None, None, dict.fromkeys(backends, 0.0)
    for start, rows in gallery_chunks(size, dim, args.chunk, args.seed):
        if queries is None:
            queries, targets = noisy_queries(rows, args.queries, args.noise, args.seed)
            exact = RunningTopK(queries, max(K_VALUES))
        exact.add(start, rows)
        ids = [str(i) for i in range(start, start + len(rows))]
        for backend, builder in builders.items():
            tick = time.perf_counter()
            builder.add(rows, ids)
            add_s[backend] += time.perf_counter() - tick
        log(f"  {start + len(rows):,} / {size:,} added ({time.perf_counter() - started:.0f} s)")
    target_rank1 = (exact.indices[:, 0] == targets).float().mean().item()
    report = {"size": size, "dim": dim, "queries": args.queries, "exact_fp32_bytes_per_image": 4 * dim,
              "targets_ranked_first_by_exact": round(target_rank1, 4)}  # fmt: skip
    for backend, builder in builders.items():
        report[backend] = measure_backend(builder, queries, exact.indices, add_s[backend], args, work / backend)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def measure_backend(builder: IndexBuilder, queries: torch.Tensor, exact: torch.Tensor, add_s: float, args,
                    folder: Path) -> dict:  # fmt: skip
    """Save the built index, load it back as a reader would (embeddings memory-mapped) and search it with each
    swept nprobe (at the chosen rerank) and each swept rerank (at the chosen nprobe)."""
    built = builder.finish()
    tick = time.perf_counter()
    built.save(folder)
    save_s = time.perf_counter() - tick
    options, size = built.options, len(built)
    del built  # searched below as a reader loads it: the embeddings mapped from the saved file
    memory_bytes = (folder / FAISS_FILE).stat().st_size
    disk_bytes = sum(path.stat().st_size for path in folder.iterdir())
    result = {**options.parameters(), "add_s": round(add_s, 1), "save_s": round(save_s, 1),
              "bytes_per_image": round(memory_bytes / size, 1),
              "bytes_per_image_vs_fp32": round(memory_bytes / size / (4 * builder.dim), 4),
              "disk_bytes_per_image": round(disk_bytes / size, 1)}  # fmt: skip
    nlist = options.nlist or 0
    settings = [(p, options.rerank) for p in sorted({*args.nprobe_sweep, options.nprobe}) if p <= nlist]
    if options.backend == HEADLINE_BACKEND:
        settings += [(options.nprobe, r) for r in sorted(set(args.rerank_sweep)) if r != options.rerank]
    for nprobe, rerank in settings or [(None, 0)]:
        anon_before = _anonymous_memory()
        searched = CIRIndex.load(folder, **({} if nprobe is None else {"nprobe": nprobe}),
                                 **({"rerank": rerank} if options.backend == HEADLINE_BACKEND else {}))  # fmt: skip
        tick = time.perf_counter()
        found = searched.search(queries, max(K_VALUES)).indices
        seconds = time.perf_counter() - tick
        row = {f"recall_at_{k}_vs_exact": round(top_k_overlap(found, exact, k), 4) for k in K_VALUES}
        row.update({f"nn_recall_at_{k}": round(nn_recall(found, exact, k), 4) for k in K_VALUES})
        row["search_ms_per_query"] = round(1000 * seconds / len(queries), 2)
        log(f"{options.backend} nprobe={nprobe} rerank={rerank}: {row}")
        if nprobe in (None, options.nprobe) and rerank == options.rerank:
            result.update(row)
            if anon_before is not None:  # what loading and searching took in private memory: the mapped rows are not
                grown = _anonymous_memory() - anon_before
                result["loaded_private_bytes_per_image"] = round(grown / size, 1)
        result.setdefault("sweep", {})[f"nprobe={nprobe},rerank={rerank}"] = row
        del searched
    log(f"{options.backend}: {result}")
    return result


def _anonymous_memory() -> int | None:
    """This process's resident private (anonymous) memory in bytes, from /proc (None elsewhere): a mapped
    file's pages count as RssFile instead, reclaimable by the kernel."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) * 1024 if "RssAnon" in fields else None


# ----------------------------------------------------------------------------------------------- encoding
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _demo_model(folder: Path) -> None:
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model, FashionBlip2Processor

    config = FashionBlip2Config.from_preset("demo")
    processor = FashionBlip2Processor.from_texts(["is red blue longer shorter with stripes and"],
                                                 image_size=config.vision_config.image_size,
                                                 max_text_length=config.max_text_length)  # fmt: skip
    torch.manual_seed(0)
    FashionBlip2Model(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def encoding(work: Path, num_images: int, batch_size: int) -> dict:
    """images/s of the index-build command over a synthetic gallery with 1 and with 2 processes."""
    from facap_dataset.synthetic import build_synthetic

    log(f"building a {num_images}-image synthetic set and a random demo model ...")
    dataset = build_synthetic(work / "synthetic", num_images=num_images)
    _demo_model(work / "model")
    command = ["-m", "facap_eval.build_index", "--model", str(work / "model"), "--dataset", str(dataset),
               "--config", "dress-gallery", "--split", "validation", "--batch-size", str(batch_size), "--no-progress"]  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]  # fmt: skip
    runs = {}
    for name, prefix in (("1_process", [sys.executable]), ("2_processes", launch)):
        out = work / f"index-{name}"
        child = subprocess.run([*prefix, *command, "--out", str(out)], capture_output=True, text=True,
                               env={**os.environ, **CHILD_ENV}, cwd=REPO)  # fmt: skip
        if child.returncode != 0:
            raise SystemExit(f"the {name} build failed:\n{child.stderr[-3000:]}")
        summary = json.loads(child.stdout.strip().splitlines()[-1])
        runs[name] = {key: summary[key] for key in ("images", "processes", "encode_s", "images_per_s")}
        log(f"{name}: {runs[name]}")
    ratio = runs["2_processes"]["images_per_s"] / runs["1_process"]["images_per_s"]
    # `accelerate launch` gives each process OMP_NUM_THREADS=1; a plain run uses every core's thread.
    return {"model": "demo preset (random weights)", "batch_size": batch_size,
            "threads": {"1_process": torch.get_num_threads(), "2_processes": "1 each (accelerate launch default)"},
            **runs, "speedup_2_vs_1": round(ratio, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int_list, default=[100_000], help="gallery sizes, e.g. 100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE, help="query noise: larger is harder")
    parser.add_argument("--preset", default="blip2-vit-g", help="the preset whose embedding_dim is the width")
    parser.add_argument("--backends", default=HEADLINE_BACKEND, help="comma list of FAISS backends")
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--nprobe", type=int, default=256, help="lists searched (random data: all of them)")
    parser.add_argument("--nprobe-sweep", type=int_list, default=[16, 64], help="extra nprobe values to report")
    parser.add_argument("--m", type=int, help="PQ sub-quantizers (default: one byte per 3 dimensions)")
    parser.add_argument("--nbits", type=int, default=8)
    parser.add_argument("--rerank", type=int, default=20, help="IVF-PQ shortlist factor re-scored exactly (0: codes alone)")
    parser.add_argument("--rerank-sweep", type=nonnegative_int_list, default=[0, 5, 10, 40],
                        help="other rerank factors to report (0: the codes alone)")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, help="where the indexes are written (default: a temporary folder); "
                                                       "1M vectors need about 2 x 12 GB")  # fmt: skip
    parser.add_argument("--train-size", type=int, default=16_384, help="vectors the IVF/PQ training sees")
    parser.add_argument("--chunk", type=int, default=25_000, help="gallery rows generated (and held) at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--skip-encoding", action="store_true")
    parser.add_argument("--encode-images", type=int, default=50_000, help="synthetic set size for the encoding runs (its dress validation gallery is about 10 %%)")
    parser.add_argument("--encode-batch-size", type=int, default=32)
    args = parser.parse_args()
    cosine = 1 / (1 + args.noise**2) ** 0.5
    result = {"query_model": f"noisy copy of a gallery vector: normalize(g + {args.noise} n / sqrt(D)), n ~ N(0, I); "
                             f"cos(query, target) about {cosine:.2f}"}  # fmt: skip
    if not args.skip_encoding:
        with tempfile.TemporaryDirectory(prefix="bench_index_") as work:
            result["encoding"] = encoding(Path(work), args.encode_images, args.encode_batch_size)
    if not args.skip_faiss:
        import faiss

        dim = preset_width(args.preset)
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        result.update({"preset": args.preset, "dim": dim, "faiss_threads": faiss.omp_get_max_threads()})
        with tempfile.TemporaryDirectory(prefix="bench_index_", dir=args.work_dir) as work:
            result["sizes"] = []
            for size in args.sizes:
                result["sizes"].append(faiss_size(size, dim, args, backends, Path(work) / str(size)))
                shutil.rmtree(Path(work) / str(size))  # this size's indexes: the next needs the disk
        if HEADLINE_BACKEND in backends:
            largest = result["sizes"][-1][HEADLINE_BACKEND]
            codes_alone = largest["sweep"].get(f"nprobe={largest['nprobe']},rerank=0", {})
            result["ivfpq_recall_at_10_vs_exact"] = largest["recall_at_10_vs_exact"]
            result["ivfpq_recall_at_50_vs_exact"] = largest["recall_at_50_vs_exact"]
            result["ivfpq_rerank"] = largest["rerank"]
            result["ivfpq_recall_at_50_without_rerank"] = codes_alone.get("recall_at_50_vs_exact")
            result["ivfpq_nn_recall_at_50"] = largest["nn_recall_at_50"]
            result["ivfpq_bytes_per_image_vs_fp32"] = largest["bytes_per_image_vs_fp32"]
            result["ivfpq_disk_bytes_per_image"] = largest["disk_bytes_per_image"]
            result["ivfpq_search_ms_per_query"] = largest["search_ms_per_query"]
            result["ivfpq_headline_size"] = result["sizes"][-1]["size"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
