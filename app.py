"""Interactive composed image retrieval demo: a Gradio app over an indexed catalogue.

    python app.py --model DIR_OR_ID --dataset DIR_OR_ID [--config dress-gallery] [--index [CONFIG=]DIR]

Pick a reference image from the catalogue (or upload one), type a modification text and see the top-k
catalogue images with their scores. Each gallery config is indexed once: a saved `CIRIndex` given with
`--index` is loaded as is (no re-encoding); otherwise the catalogue is encoded with a progress bar and the
index cached under `--cache-dir`, keyed by the model's and the dataset's fingerprints. See docs/app.md.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import gradio as gr
import torch
from PIL import Image

from facap_dataset.captions import join_captions
from facap_dataset.errors import DataError
from facap_dataset.images import load_rgb
from facap_dataset.loading import resolve as resolve_dataset
from facap_dataset.schema import GALLERY_SUFFIX, is_gallery_config

import eval_cir
from facap_retrieval.cache import model_fingerprint
from facap_retrieval.index import CIRIndex
from facap_retrieval.ranking import RetrievalError

DEFAULT_MODEL = "demo_output/run/best"  # what `make demo` trains and builds
DEFAULT_DATASET = "./demo_output/synthetic"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "facap" / "app"
# Uploads are shrunk to this longest side before anything else: the processor resizes to the model's input
# size anyway, and a 50-megapixel photo would otherwise cost seconds and hundreds of MB per query.
MAX_QUERY_SIDE = 1024
MAX_UPLOAD_SIZE = "50mb"
BROWSE_PAGE_SIZE = 24
RESULTS_LABEL = "Results"
IMAGE_ONLY_LABEL = "Image-only results (no modification text)"
IMAGE_ONLY_NOTE = (
    "**Image-only query**: no modification text was given, so these are the catalogue images closest to "
    "the reference itself (no composition)."
)
# System fonts only: the default theme would fetch Google Fonts, which offline machines cannot reach.
THEME = gr.themes.Soft(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
)


class AppError(RuntimeError):
    """A start-up problem the user can fix (bad model, dataset, config or index); printed as one line."""


# ------------------------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="saved FashionBLIP-2 dir or hub id (default: %(default)s)")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="built dataset dir or hub id (default: %(default)s)")
    parser.add_argument(
        "--config",
        action="append",
        dest="configs",
        metavar="CONFIG",
        help="gallery config(s) to search, repeatable or comma-separated (default: every *-gallery config)",
    )
    parser.add_argument("--split", default="validation", help="gallery and examples split (default: validation)")
    parser.add_argument(
        "--index",
        action="append",
        dest="indexes",
        default=[],
        metavar="[CONFIG=]DIR",
        help="a saved CIRIndex folder to search instead of encoding the gallery; CONFIG= is needed with several configs",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="gallery embedding cache, shared with eval_cir.py (default: %(default)s)",
    )
    parser.add_argument(
        "--save-index", type=Path, metavar="DIR", help="write each gallery's index to DIR/CONFIG for --index, then exit"
    )
    parser.add_argument("--top-k", type=int, default=10, help="results shown per query (default: 10)")
    parser.add_argument("--num-examples", type=int, default=4, help="example triplets per category")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size when encoding the catalogue")
    # Left to Gradio by default: 127.0.0.1 and the first free port from 7860, unless GRADIO_SERVER_NAME /
    # GRADIO_SERVER_PORT say otherwise (as they do on a Hugging Face Space).
    parser.add_argument("--host", help="address to serve on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to serve on (default: the first free one from 7860)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    return args


def split_configs(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def parse_index_options(values: Sequence[str], configs: Sequence[str]) -> dict[str, Path]:
    """Map `--index [CONFIG=]DIR` options onto the gallery configs they index."""
    mapping: dict[str, Path] = {}
    for value in values:
        config, sep, folder = value.partition("=")
        if not sep:
            config, folder = "", value
        if not config:
            if len(configs) != 1:
                raise AppError(f"--index {value}: name its config (CONFIG=DIR) when searching {len(configs)} configs")
            config = configs[0]
        if config not in configs:
            raise AppError(f"--index {value}: config {config!r} is not among the searched configs {list(configs)}")
        if not Path(folder).is_dir():
            raise AppError(f"--index {value}: no such index folder {folder!r}")
        mapping[config] = Path(folder)
    return mapping


# ------------------------------------------------------------------------------------------------ catalogue


def category_of(config: str) -> str:
    return config[: -len(GALLERY_SUFFIX)]


@dataclass
class Catalogue:
    """One gallery config: ids, encoded image bytes (decoded only when shown or queried) and its index."""

    config: str
    ids: list[str]
    image_bytes: list[bytes]
    index: CIRIndex
    index_source: str
    files_dir: Path

    def __post_init__(self):
        self.rows = {image_id: row for row, image_id in enumerate(self.ids)}
        stray = [image_id for image_id in self.index.ids if image_id not in self.rows]
        if stray:
            raise AppError(
                f"the index ({self.index_source}) holds {len(stray)} ids that are not in gallery {self.config}, "
                f"e.g. {stray[0]!r}: it was built for another catalogue"
            )

    @property
    def category(self) -> str:
        return category_of(self.config)

    def image_path(self, row: int) -> str:
        """Path of the image of gallery row `row`, written on first use (the browser is served files)."""
        path = self.files_dir / self.config / f"{row:07d}.{_image_suffix(self.image_bytes[row])}"
        if not path.exists():
            # Written aside and renamed: handlers run in threads, and none may serve a half-written file.
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".part")
            with open(handle, "wb") as stream:
                stream.write(self.image_bytes[row])
            os.replace(temp, path)
        return str(path)

    def image(self, row: int) -> Image.Image:
        return load_rgb(self.image_bytes[row], name=f"{self.config}/{self.ids[row]}")


def _image_suffix(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return (image.format or "png").lower().replace("jpeg", "jpg")


def resolve_configs(dataset: str, requested: list[str] | None) -> list[str]:
    try:
        resolve_dataset(dataset)  # facap_dataset's rule: a cwd folder never silently shadows a Hub id
        available = datasets.get_dataset_config_names(dataset)
    except (OSError, ValueError) as error:  # FileNotFoundError locally, ConnectionError for an unreachable hub id
        hint = " (`make demo` builds it)" if dataset == DEFAULT_DATASET else ""
        raise AppError(f"cannot read dataset {dataset!r}{hint}: {type(error).__name__}: {error}") from error
    galleries = [name for name in available if is_gallery_config(name)]
    if not galleries:
        raise AppError(f"dataset {dataset!r} has no gallery config (*{GALLERY_SUFFIX}); it has {available}")
    if requested is None:
        return galleries
    unknown = [name for name in requested if name not in galleries]
    if unknown:
        raise AppError(f"dataset {dataset!r} has no gallery config {unknown[0]!r}; choose from {galleries}")
    return requested


def load_gallery(dataset: str, config: str, split: str) -> datasets.Dataset:
    try:
        gallery = datasets.load_dataset(dataset, config, split=split)
    except ValueError as error:
        raise AppError(f"dataset {dataset!r} config {config!r} has no split {split!r}: {error}") from error
    if len(gallery) == 0:
        raise AppError(f"gallery {config}/{split} of {dataset!r} is empty")
    return gallery


# ------------------------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Hits:
    """One query's results: gallery rows best first, their scores, and how long the query took."""

    rows: list[int]
    scores: list[float]
    image_only: bool
    seconds: float


def prepare_upload(path: str) -> tuple[Image.Image, str]:
    """Decode an uploaded file into an RGB query image, shrinking huge ones; returns it and a note."""
    image = load_rgb(Path(path), name=Path(path).name)
    note = ""
    if max(image.size) > MAX_QUERY_SIDE:
        original = image.size
        image = image.copy()
        image.thumbnail((MAX_QUERY_SIDE, MAX_QUERY_SIDE), Image.Resampling.LANCZOS)
        note = f"Uploaded image downscaled from {original[0]}×{original[1]} to {image.size[0]}×{image.size[1]}."
    return image, note


class SearchEngine:
    """The model, its processor and the indexed catalogues; one query at a time."""

    def __init__(self, model, processor, device: torch.device, catalogues: dict[str, Catalogue], files_dir: Path):
        self.model = model
        self.processor = processor
        self.device = device
        self.catalogues = catalogues  # category -> Catalogue
        self.files_dir = files_dir  # images served to the browser (catalogue, examples, uploads)

    @torch.inference_mode()
    def encode_query(self, image: Image.Image, text: str) -> tuple[torch.Tensor, bool]:
        """Query embedding `(1, D)`; an empty text gives the reference's own candidate embedding."""
        text = text.strip()
        if not text:
            inputs = self.processor(images=[image], return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device)
            return self.model.get_candidate_embeddings(pixel_values), True
        inputs = self.processor(images=[image], text=[text], return_tensors="pt")
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        embeddings = self.model.get_query_embeddings(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
        )
        return embeddings, False

    def check_dimensions(self) -> None:
        """Refuse, at start-up, an index whose embeddings the model cannot have made (another model's index)."""
        probe, _ = self.encode_query(Image.new("RGB", (32, 32)), "")
        for catalogue in self.catalogues.values():
            if catalogue.index.embeddings.shape[1] != probe.shape[-1]:
                raise AppError(
                    f"the {catalogue.config} index ({catalogue.index_source}) holds {catalogue.index.embeddings.shape[1]}-d "
                    f"embeddings but the model makes {probe.shape[-1]}-d ones: it was built with another model"
                )

    def search(self, image: Image.Image, text: str, category: str, k: int) -> Hits:
        catalogue = self.catalogues[category]
        k = max(1, min(int(k), len(catalogue.index)))
        start = time.perf_counter()
        query, image_only = self.encode_query(image, text)
        found = catalogue.index.search(query, k)
        seconds = time.perf_counter() - start
        # An approximate backend may return fewer than k items (id None): they are dropped, not shown.
        hits = [(catalogue.rows[i], score) for i, score in zip(found.ids[0], found.scores[0].tolist()) if i is not None]
        return Hits([row for row, _ in hits], [score for _, score in hits], image_only, seconds)


# ---------------------------------------------------------------------------------------------------- UI


@dataclass(frozen=True)
class Example:
    reference_path: str
    text: str
    category: str
    target_path: str


def result_caption(rank: int, image_id: str, score: float) -> str:
    return f"#{rank} · {score:.3f} · {image_id}"


class DemoActions:
    """The UI's event handlers, kept apart from the layout so that tests can call them directly."""

    def __init__(self, engine: SearchEngine):
        self.engine = engine

    def browse(self, category: str, page: int = 0) -> tuple[list[str], list[int], int]:
        """One page of the category's catalogue: image paths, their gallery rows, the page number."""
        catalogue = self.engine.catalogues[category]
        pages = -(-len(catalogue.ids) // BROWSE_PAGE_SIZE)
        page %= pages
        rows = list(range(page * BROWSE_PAGE_SIZE, min(len(catalogue.ids), (page + 1) * BROWSE_PAGE_SIZE)))
        return [catalogue.image_path(row) for row in rows], rows, page

    def next_page(self, category: str, page: int):
        return self.browse(category, page + 1)

    def pick(self, category: str, rows: list[int], event: gr.SelectData):
        """A click in the catalogue: that image becomes the reference (and any example target is cleared)."""
        catalogue = self.engine.catalogues[category]
        row = rows[event.index]
        return catalogue.image_path(row), None, f"Reference: catalogue image `{catalogue.ids[row]}` ({category})."

    def upload(self, path: str | None):
        """An uploaded file becomes the reference, decoded, converted to RGB and shrunk if huge."""
        if path is None:
            return gr.skip(), gr.skip(), gr.skip()
        name = Path(path).name
        try:
            image, note = prepare_upload(path)
        except DataError as error:  # the message names the file by the server-side path of the upload
            raise gr.Error(f"{name} cannot be used as a reference image: {str(error).replace(path, name)}") from error
        # Saved losslessly: the reference component hands the search exactly these pixels.
        handle, saved = tempfile.mkstemp(suffix=".png", dir=self.engine.files_dir)
        with open(handle, "wb") as stream:
            image.save(stream, format="PNG")
        return saved, None, f"Reference: uploaded `{name}`. {note}".strip()

    def search(self, reference: Image.Image | None, text: str | None, category: str, k: float):
        if reference is None:
            raise gr.Error("Choose a reference image first: click one in the catalogue, upload one or pick an example.")
        hits = self.engine.search(reference.convert("RGB"), text or "", category, int(k))
        catalogue = self.engine.catalogues[category]
        items = [
            (catalogue.image_path(row), result_caption(rank, catalogue.ids[row], score))
            for rank, (row, score) in enumerate(zip(hits.rows, hits.scores), start=1)
        ]
        timing = (
            f"{len(items)} results from {len(catalogue.ids)} `{category}` images "
            f"in {hits.seconds * 1000:.0f} ms on {self.engine.device.type}."
        )
        if hits.image_only:
            return gr.Gallery(value=items, label=IMAGE_ONLY_LABEL), f"{IMAGE_ONLY_NOTE} {timing}"
        return gr.Gallery(value=items, label=RESULTS_LABEL), f"Query: “{text.strip()}”. {timing}"


def build_ui(engine: SearchEngine, examples: Sequence[Example], *, top_k: int, title_note: str) -> gr.Blocks:
    actions = DemoActions(engine)
    categories = list(engine.catalogues)
    with gr.Blocks(title="FashionBLIP-2 composed image retrieval", analytics_enabled=False) as demo:
        gr.Markdown(
            "# FashionBLIP-2 · composed image retrieval\n"
            "Pick a reference garment, describe the change you want, and search the catalogue.\n\n" + title_note
        )
        browse_rows = gr.State([])
        browse_page = gr.State(0)
        with gr.Row():
            with gr.Column(scale=3):
                category = gr.Dropdown(categories, value=categories[0], label="Category", elem_id="category")
                catalogue = gr.Gallery(
                    label="Catalogue (click an image to use it as the reference)",
                    columns=6,
                    height=330,
                    allow_preview=False,
                    interactive=False,
                    elem_id="catalogue",
                )
                more = gr.Button("Show more catalogue images", size="sm")
                upload = gr.UploadButton(
                    "…or upload a reference image", file_types=["image"], type="filepath", elem_id="upload"
                )
            with gr.Column(scale=2):
                with gr.Row():
                    reference = gr.Image(label="Reference", type="pil", interactive=False, height=200, elem_id="reference")
                    target = gr.Image(label="Target (examples only)", interactive=False, height=200, elem_id="target")
                text = gr.Textbox(
                    label="Modification text",
                    placeholder="e.g. is red with long sleeves (leave empty for an image-only query)",
                    elem_id="text",
                )
                k = gr.Slider(1, max(50, top_k), value=top_k, step=1, label="Results (top-k)", elem_id="top-k")
                search = gr.Button("Search", variant="primary", elem_id="search")
                status = gr.Markdown("Choose a reference image to begin.", elem_id="status")
        results = gr.Gallery(label=RESULTS_LABEL, columns=5, height="auto", elem_id="results")
        if examples:
            gr.Examples(
                examples=[[e.reference_path, e.text, e.category, e.target_path] for e in examples],
                inputs=[reference, text, category, target],
                label="Validation triplets (the target is shown for comparison)",
                examples_per_page=12,
            )

        # The category filter leaves the target alone: an example sets category and target together.
        for trigger in (demo.load, category.change):
            trigger(actions.browse, inputs=category, outputs=[catalogue, browse_rows, browse_page])
        more.click(actions.next_page, inputs=[category, browse_page], outputs=[catalogue, browse_rows, browse_page])
        catalogue.select(actions.pick, inputs=[category, browse_rows], outputs=[reference, target, status])
        upload.upload(actions.upload, inputs=upload, outputs=[reference, target, status])
        for trigger in (search.click, text.submit):
            trigger(actions.search, inputs=[reference, text, category, k], outputs=[results, status])
    return demo


# ------------------------------------------------------------------------------------------------ start-up


def select_device(name: str | None) -> torch.device:
    try:
        return eval_cir.resolve_device(name)
    except eval_cir.EvalError as error:
        raise AppError(f"--device {error}") from error


def load_model(model: str, device: torch.device):
    """The model and processor, or an AppError naming the path; a missing local path fails before any hub lookup."""
    looks_local = Path(model).exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not Path(model).expanduser().is_dir():
        hint = "; `make demo` trains it" if model == DEFAULT_MODEL else ""
        raise AppError(f"model {model!r} does not exist (expected a saved FashionBLIP-2 folder or a hub id{hint})")
    try:
        return eval_cir.load_model_and_processor(model, device)
    except (OSError, ValueError) as error:
        raise AppError(f"cannot load model {model!r}: {error}") from error


def index_for(args, model, processor, config: str, gallery: datasets.Dataset, index_dir: Path | None, fingerprint):
    """The gallery's CIRIndex and where it came from: the saved one when given, else built from the gallery
    embeddings, which are encoded with a progress bar and cached the way eval_cir caches them (the same
    `--cache-dir` serves both). `fingerprint()` gives the model fingerprint that keys the cache."""
    if index_dir is not None:
        try:
            return CIRIndex.load(index_dir), f"loaded from {index_dir}"
        except RetrievalError as error:
            raise AppError(f"--index {index_dir}: {error}") from error
    with torch.inference_mode():
        embeddings, ids, cache_state = eval_cir.gallery_embeddings(
            model, processor, gallery, category_of(config), args.split,
            model_fp=fingerprint(), batch_size=args.batch_size, cache_dir=args.cache_dir,
        )
    if embeddings.ndim != 2:
        raise AppError(
            f"model {args.model!r} gives per-token candidate embeddings (matching='max'); "
            "the demo searches the (N, D) embeddings of a multihead-matching model"
        )
    cached = f"read from the cache in {args.cache_dir}" if cache_state == "hit" else f"built, cached in {args.cache_dir}"
    return CIRIndex.build(embeddings.float(), ids), cached


def load_catalogue(args, model, processor, config: str, index_dir: Path | None, fingerprint, files_dir: Path) -> Catalogue:
    gallery = load_gallery(args.dataset, config, args.split)
    index, source = index_for(args, model, processor, config, gallery, index_dir, fingerprint)
    images = [item["bytes"] for item in gallery.cast_column("image", datasets.Image(decode=False))["image"]]
    return Catalogue(config, list(gallery["image_id"]), images, index, source, files_dir)


def load_examples(args, categories: Sequence[str], files_dir: Path) -> list[Example]:
    """The first `--num-examples` validation triplets (with a target and captions) of each category that has
    a triplet config; their images are written to `files_dir` for the browser."""
    available = set(datasets.get_dataset_config_names(args.dataset))
    folder = files_dir / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    examples: list[Example] = []
    for category in (c for c in categories if c in available and args.num_examples > 0):
        triplets = datasets.load_dataset(args.dataset, category, split=args.split)
        usable = triplets.filter(
            lambda target, captions: target is not None and any(c.strip() for c in captions),
            input_columns=["target_id", "captions"],
        )
        for number, row in enumerate(usable.select(range(min(args.num_examples, len(usable))))):
            reference = folder / f"{category}-{number}-reference.png"
            target = folder / f"{category}-{number}-target.png"
            row["reference_image"].convert("RGB").save(reference)
            row["target_image"].convert("RGB").save(target)
            examples.append(Example(str(reference), join_captions(row["captions"]), category, str(target)))
    return examples


def create_app(args: argparse.Namespace, files_dir: Path) -> tuple[gr.Blocks, SearchEngine]:
    """Load everything the demo needs and build its UI; raises AppError/DataError on bad input."""
    configs = resolve_configs(args.dataset, split_configs(args.configs))
    index_dirs = parse_index_options(args.indexes, configs)
    device = select_device(args.device)
    model, processor = load_model(args.model, device)
    # Hashing the weights costs seconds for a BLIP-2-sized model: once, and only if some gallery is encoded.
    fingerprint = functools.cache(lambda: model_fingerprint(model, processor))
    catalogues = {}
    for config in configs:
        catalogue = load_catalogue(args, model, processor, config, index_dirs.get(config), fingerprint, files_dir)
        catalogues[catalogue.category] = catalogue
    engine = SearchEngine(model, processor, device, catalogues, files_dir)
    engine.check_dimensions()
    examples = load_examples(args, list(catalogues), files_dir)
    note = f"Model `{args.model}` on **{device.type}** · dataset `{args.dataset}` ({args.split} split)\n" + "\n".join(
        f"- {c.category}: {len(c.ids)} images, index {c.index_source}" for c in catalogues.values()
    )
    return build_ui(engine, examples, top_k=args.top_k, title_note=note), engine


def launch(demo: gr.Blocks, args: argparse.Namespace, files_dir: Path, *, block: bool = True, quiet: bool = False):
    return demo.launch(
        server_name=args.host,
        server_port=args.port,
        prevent_thread_lock=not block,
        quiet=quiet,
        ssr_mode=False,
        theme=THEME,
        max_file_size=MAX_UPLOAD_SIZE,
        allowed_paths=[str(files_dir)],
        footer_links=["api", "settings"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="facap-app-") as files_dir:
        try:
            demo, engine = create_app(args, Path(files_dir))
        except (AppError, DataError, RetrievalError, eval_cir.EvalError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if args.save_index is not None:
            for catalogue in engine.catalogues.values():
                folder = catalogue.index.save(args.save_index / catalogue.config)
                print(f"saved the {catalogue.config} index: serve it with --index {catalogue.config}={folder}")
            return 0
        try:
            launch(demo, args, Path(files_dir))
        except OSError as error:  # e.g. the port is taken
            print(f"error: cannot start the web server: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
