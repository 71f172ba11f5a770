"""The page: layout (`build_ui`) and its event handlers (`DemoActions`, callable without a browser).

Named API endpoints (for `gradio_client`): `/search` (reference image, text, category, k) and `/upload` (a file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import gradio as gr
from gradio.utils import get_upload_folder

from facap_dataset.errors import DataError

from .catalogue import Example
from .components import ReferenceImage
from .search import SearchEngine, read_reference

BROWSE_PAGE_SIZE = 24
RESULTS_LABEL = "Results"
IMAGE_ONLY_LABEL = "Image-only results (no modification text)"
IMAGE_ONLY_NOTE = (
    "**Image-only query**: no modification text was given, so these are the catalogue images closest to "
    "the reference itself (no composition)."
)
NO_REFERENCE = "Choose a reference image first: click one in the catalogue, upload one or pick an example."
# Gradio's files (uploads and the images it serves) are checked for expiry this often; see `--upload-ttl`.
CACHE_SWEEP_SECONDS = 60
# System fonts only: the default theme would fetch Google Fonts, which offline machines cannot reach.
THEME = gr.themes.Soft(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
)


def result_caption(rank: int, image_id: str, score: float) -> str:
    return f"#{rank} · {score:.3f} · {image_id}"


def _decode(path: str):
    """The reference image at `path` (RGB, shrunk if huge) and its note, or a gr.Error naming the file."""
    name = Path(path).name  # Gradio keeps the sender's file name as the last path component
    try:
        return read_reference(path, name=name)
    except DataError as error:
        raise gr.Error(f"{name} cannot be used as a reference image: {str(error).replace(str(path), name)}") from None


def _discard_upload(path: str) -> None:
    """Delete a file Gradio received for us (never anything outside Gradio's upload folder): its pixels now live
    in the reference slot, and raw uploads of several MB each would otherwise pile up until the server stops."""
    received = Path(path).resolve()
    if received.is_relative_to(Path(get_upload_folder()).resolve()):
        received.unlink(missing_ok=True)


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
        """An uploaded file becomes the reference: decoded, converted to RGB and shrunk if huge. The received file
        is then deleted; the reference slot keeps a lossless PNG of the decoded pixels (Gradio's cache)."""
        if path is None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            image, note = _decode(path)
        finally:
            _discard_upload(path)
        return image, None, f"Reference: uploaded `{Path(path).name}`. {note}".strip()

    def search(self, reference: str | None, text: str | None, category: str, k: float):
        if reference is None:
            raise gr.Error(NO_REFERENCE)
        if category not in self.engine.catalogues:
            raise gr.Error(f"Unknown category {category!r}; choose one of {', '.join(self.engine.catalogues)}.")
        image, _ = _decode(reference)
        hits = self.engine.search(image, text or "", category, int(k))
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


def build_ui(engine: SearchEngine, examples: Sequence[Example], *, top_k: int, title_note: str, upload_ttl: int) -> gr.Blocks:
    """The page; Gradio deletes the files it holds for it (uploads, served images) `upload_ttl` seconds after they
    were written, and all of them when the server stops."""
    actions = DemoActions(engine)
    categories = list(engine.catalogues)
    sweep = (min(CACHE_SWEEP_SECONDS, upload_ttl), upload_ttl)
    with gr.Blocks(title="FashionBLIP-2 composed image retrieval", analytics_enabled=False, delete_cache=sweep) as demo:
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
                    # PNG: the reference slot hands the search exactly the decoded pixels (webp would be lossy).
                    reference = ReferenceImage(
                        label="Reference", type="filepath", format="png", interactive=False, height=200,
                        elem_id="reference",
                    )  # fmt: skip
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
        demo.load(actions.browse, inputs=category, outputs=[catalogue, browse_rows, browse_page], api_name="browse")
        category.change(actions.browse, inputs=category, outputs=[catalogue, browse_rows, browse_page],
                        api_visibility="private")
        more.click(actions.next_page, inputs=[category, browse_page], outputs=[catalogue, browse_rows, browse_page],
                   api_visibility="private")
        catalogue.select(actions.pick, inputs=[category, browse_rows], outputs=[reference, target, status],
                         api_visibility="private")
        upload.upload(actions.upload, inputs=upload, outputs=[reference, target, status], api_name="upload")
        search.click(actions.search, inputs=[reference, text, category, k], outputs=[results, status], api_name="search")
        text.submit(actions.search, inputs=[reference, text, category, k], outputs=[results, status],
                    api_visibility="private")
    return demo
