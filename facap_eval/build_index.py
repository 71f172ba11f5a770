"""Index a catalogue: encode a gallery config with a model and write a CIRIndex folder that `app.py --index`
and evaluation read.

    python -m facap_eval.build_index --model runs/demo/final --dataset data/synthetic --config dress-gallery \\
        --split validation --out indexes/dress [--backend faiss-ivfpq --nlist 256 --nprobe 32 --m 1024 --nbits 8
        --rerank 20]
    accelerate launch -m facap_eval.build_index ...        # encoding sharded over the processes

The gallery is read in blocks of `--block-size` rows (memory-mapped Arrow, decoded a batch at a time), so
memory is bounded by a block's embeddings and the index, not by the images or the whole gallery's fp32
embeddings. Each block is encoded through `facap_eval.gallery_embeddings` (sharded over the processes of an
Accelerate launch, cached in `--cache-dir` when given); the main process trains the index on the first
blocks, adds every block and writes the folder once, whole; embeddings the index keeps (exact, `--rerank`,
`--keep-embeddings`) spill to an unlinked temporary file beside `--out` until then. The folder records the backend and every
parameter, the embedding width, the model fingerprint and the gallery (dataset, config, split, fingerprint),
so a reader refuses it for another model or gallery. Everything that can be checked is checked before any
image is encoded; bad input is one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from facap_dataset.errors import DataError
from facap_dataset.loading import open_dataset
from facap_io.atomic import check_writable
from facap_io.errors import FacapError
from facap_retrieval.cache import gallery_fingerprint, model_fingerprint
from facap_retrieval.index import BACKENDS, IndexOptions, IndexSource, build_index, check_destination

from .cli import EXIT_BAD_INPUT, notes_to_stderr
from .distributed import check_same, launched_accelerator, launched_processes
from .errors import EvalError
from .gallery import gallery_embeddings, gallery_ids
from .model import load_model_and_processor, resolve_device
from .protocol import PRECISIONS, Runtime

GALLERY_COLUMNS = ("image_id", "image")
DEFAULT_BLOCK_SIZE = 65_536


@dataclass(frozen=True)
class BuildPlan:
    """What to index and how: the gallery (`dataset`, `config`, `split`), the model, the output folder, the
    index options, the rows encoded per block and whether the index keeps its fp32 embeddings."""

    model: str
    dataset: str
    config: str
    split: str
    out: Path
    index: IndexOptions
    block_size: int = DEFAULT_BLOCK_SIZE
    keep_embeddings: bool | None = None
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.block_size < 1:
            raise EvalError(f"--block-size must be >= 1, got {self.block_size}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m facap_eval.build_index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved FashionBLIP-2 folder or hub id")
    parser.add_argument("--dataset", required=True, help="a built dataset folder or hub id")
    parser.add_argument("--config", required=True, help="the gallery config to index, e.g. dress-gallery")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--out", type=Path, required=True, help="the index folder to write (replaced whole)")
    parser.add_argument("--backend", default="exact", choices=BACKENDS)
    parser.add_argument("--nlist", type=int, help="IVF lists (default 4 sqrt(N), at most N / 39)")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists searched per query")
    parser.add_argument("--m", type=int, help="IVF-PQ sub-quantizers, a divisor of the embedding width (default D/3)")
    parser.add_argument("--nbits", type=int, help="IVF-PQ bits per code (default 8)")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree")
    parser.add_argument("--ef-search", type=int, default=256, help="HNSW search breadth")
    parser.add_argument("--rerank", type=int, default=0,
                        help="IVF-PQ: re-score the RERANK*k best candidates by code exactly against the stored fp32 "
                             "embeddings (memory-mapped from disk, so memory holds only the codes); 0: off")  # fmt: skip
    parser.add_argument("--keep-embeddings", action="store_true",
                        help="also store the fp32 embeddings (always for exact and --rerank; lets a FAISS index be rebuilt)")  # fmt: skip
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="gallery rows encoded per block")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (per process)")
    parser.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS))
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--cache-dir", help="gallery-embedding cache shared with eval_cir.py")
    parser.add_argument("--device", help="torch device (default: cuda when available); not with a multi-process launch")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code shipped inside the model folder")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def plan_from_args(args: argparse.Namespace) -> BuildPlan:
    index = IndexOptions(args.backend, nlist=args.nlist, nprobe=args.nprobe, m=args.m, nbits=args.nbits,
                         hnsw_m=args.hnsw_m, ef_search=args.ef_search, rerank=args.rerank)  # fmt: skip
    return BuildPlan(args.model, args.dataset, args.config, args.split, args.out, index, args.block_size,
                     True if args.keep_embeddings else None, args.trust_remote_code)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with notes_to_stderr():
        try:
            summary = run(plan_from_args(args), args)
        except (FacapError, DataError) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if summary is not None:  # the main process
        print(json.dumps(summary))
    return 0


def run(plan: BuildPlan, args: argparse.Namespace) -> dict | None:
    """Build and write the index; returns a summary on the main process, None on the others."""
    check_destination(plan.out)
    check_writable(plan.out.parent, what="--out's parent folder", folder=True)
    if args.device is not None and launched_processes() > 1:
        raise EvalError(f"--device {args.device} cannot be combined with a multi-process launch: each process uses its own")
    accelerator = launched_accelerator()
    runtime = Runtime(batch_size=args.batch_size, precision=args.precision, num_workers=args.num_workers,
                      progress=not args.no_progress, cache_dir=args.cache_dir, accelerator=accelerator)  # fmt: skip
    gallery = load_gallery(plan)
    device = None if accelerator is not None else resolve_device(args.device)
    model, processor = load_model_and_processor(plan.model, device, trust_remote_code=plan.trust_remote_code)
    dim = embedding_width(model, plan.model)
    options = plan.index.resolved(len(gallery), dim)  # a bad option fails here, before any encoding
    ids = gallery_ids(gallery, f"{plan.config} ({plan.split})")
    source = IndexSource(model_fingerprint(model, processor), plan.model, plan.dataset, plan.config, plan.split,
                         gallery_fingerprint(gallery))  # fmt: skip
    check_same(accelerator, "galleries", {"dataset": plan.dataset, "config": plan.config, "split": plan.split,
                                          "fingerprint": source.gallery_fingerprint, "model": source.model_fingerprint})  # fmt: skip
    timer = _Timer()
    blocks = encoded_blocks(model, processor, gallery, plan, runtime, source.model_fingerprint, timer)
    if not runtime.is_main_process:
        for _ in blocks:  # take part in every block's collectives; the main process builds
            pass
        return None
    started = time.perf_counter()
    index = build_index(blocks, dim, len(ids), options, source=source, keep_embeddings=plan.keep_embeddings,
                        scratch_dir=plan.out.parent)  # fmt: skip
    index.save(plan.out)
    return {
        "index": str(plan.out), "images": len(index), "processes": runtime.num_processes, "backend": index.backend,
        "parameters": index.options.parameters(), "embedding_dim": dim, "encode_s": round(timer.seconds, 3),
        "images_per_s": round(len(index) / max(timer.seconds, 1e-9), 2),
        "total_s": round(time.perf_counter() - started, 3), "bytes": folder_bytes(plan.out),
    }  # fmt: skip


def load_gallery(plan: BuildPlan):
    opened = open_dataset(plan.dataset)
    gallery = opened.load_split(opened.require(plan.config), plan.split)
    missing = [column for column in GALLERY_COLUMNS if column not in gallery.column_names]
    if missing:
        raise DataError(f"config {plan.config!r} of {plan.dataset} is not a gallery: it lacks column(s) {', '.join(missing)}")
    if len(gallery) == 0:
        raise DataError(f"gallery {plan.config} ({plan.split}) of {plan.dataset} is empty")
    return gallery


def embedding_width(model, name: str) -> int:
    """The width D of the model's `(N, D)` candidate embeddings; an index needs one vector per image."""
    config = model.config
    if getattr(config, "matching", "multihead") != "multihead":
        raise EvalError(
            f"model {name} gives per-token candidate embeddings (matching={config.matching!r}); an index holds one "
            "vector per image, as a multihead-matching model gives"
        )
    width = getattr(config, "embedding_dim", None)
    if not isinstance(width, int):
        raise EvalError(f"model {name} does not state its embedding width (config.embedding_dim)")
    return width


class _Timer:
    """Wall time spent inside `gallery_embeddings` (encoding and gathering), summed over the blocks."""

    def __init__(self):
        self.seconds = 0.0


def encoded_blocks(model, processor, gallery, plan: BuildPlan, runtime: Runtime, model_fp: str,
                   timer: _Timer) -> Iterator[tuple[torch.Tensor, list[str]] | None]:  # fmt: skip
    """`(embeddings (n, D) fp32, ids)` of each block of `plan.block_size` gallery rows on the main process,
    None on the others; every process must consume every block (each is a collective)."""
    for start in range(0, len(gallery), plan.block_size):
        rows = range(start, min(start + plan.block_size, len(gallery)))
        block = gallery.select(rows)
        started = time.perf_counter()
        with torch.inference_mode():
            embedded = gallery_embeddings(model, processor, block, name=f"{plan.config} rows {rows.start}-{rows.stop - 1}",
                                          run=runtime, model_fp=model_fp)  # fmt: skip
        timer.seconds += time.perf_counter() - started
        yield None if embedded is None else (embedded.embeddings.float().cpu(), list(embedded.ids))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


if __name__ == "__main__":
    sys.exit(main())
