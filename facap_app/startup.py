"""Start-up: open the dataset, load the model, index each gallery, build the page; and serve it."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from facap_dataset.loading import open_dataset
from facap_retrieval.cache import model_fingerprint
from facap_retrieval.index import index_folders

from .catalogue import ModelInfo, gallery_configs, load_catalogue, load_examples
from .errors import AppError
from .model import embedding_width, load_model, select_device
from .options import DEFAULT_DATASET, AppOptions
from .search import SearchEngine
from .ui import THEME, build_ui

MAX_UPLOAD_SIZE = "50mb"


def _open_dataset(name: str):
    try:
        return open_dataset(name)
    except ValueError as error:  # DataError: the message names the dataset
        hint = " (`make demo` builds it)" if name == DEFAULT_DATASET else ""
        raise AppError(f"cannot read dataset {name!r}{hint}: {error}") from None


def create_app(options: AppOptions, files_dir: Path) -> tuple[gr.Blocks, SearchEngine]:
    """Load everything the demo needs and build its page; raises one of `USER_ERRORS` on bad input."""
    dataset = _open_dataset(options.dataset)
    configs = gallery_configs(dataset, options.configs)
    index_dirs = index_folders(options.indexes, configs)
    device = select_device(options.device)
    model, processor = load_model(options.model, device, trust_remote_code=options.trust_remote_code)
    # Hashing the weights costs seconds for a BLIP-2-sized model: once, and only when an index needs it.
    fingerprint = functools.cache(lambda: model_fingerprint(model, processor))
    info = ModelInfo(options.model, embedding_width(model, processor, device), fingerprint)
    catalogues = {}
    for config in configs:
        catalogue = load_catalogue(options, dataset, model, processor, config, index_dirs.get(config), info, files_dir)
        catalogues[catalogue.category] = catalogue
    engine = SearchEngine(model, processor, device, catalogues, files_dir)
    examples = load_examples(options, dataset, list(catalogues), files_dir)
    note = f"Model `{options.model}` on **{device.type}** · dataset `{options.dataset}` ({options.split} split)\n" + "\n".join(
        f"- {c.category}: {len(c.ids)} images, index {c.index_source}" for c in catalogues.values()
    )
    demo = build_ui(engine, examples, top_k=options.top_k, title_note=note, upload_ttl=options.upload_ttl)
    return demo, engine


def launch(demo: gr.Blocks, options: AppOptions, files_dir: Path, *, block: bool = True, quiet: bool = False):
    return demo.launch(
        server_name=options.host,
        server_port=options.port,
        prevent_thread_lock=not block,
        quiet=quiet,
        ssr_mode=False,
        theme=THEME,
        max_file_size=MAX_UPLOAD_SIZE,
        allowed_paths=[str(files_dir)],
        footer_links=["api", "settings"],
    )
