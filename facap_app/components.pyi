"""Gradio components of the page that differ from Gradio's own.

Gradio writes a type stub (`components.pyi`) next to any module that defines a component; it is shipped
with the package, so Gradio finds it up to date and writes nothing at run time.
"""

from __future__ import annotations

import gradio as gr

from gradio.events import Dependency

class ReferenceImage(gr.Image):
    """The reference slot: shown like `gr.Image`, but its input reaches the handlers as the file's path, undecoded.

    `gr.Image` decodes inputs inside Gradio, before any handler runs, so a text file or a 20000×20000 PNG sent
    to `/search` through the API failed there with a bare exception; here the handler decodes the file with the
    project's image rules and answers a `gr.Error` naming it.
    """

    @classmethod
    def get_block_name(cls) -> str:
        return "image"  # the browser renders it with gr.Image's front end

    def preprocess(self, payload) -> str | None:
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error("The reference image arrived without a file; send it as a file.")
        return str(payload.path)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component