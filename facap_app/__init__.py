"""The FashionBLIP-2 search demo as a library: a Gradio app over indexed catalogues.

- `options`: `AppOptions` (flags and `FACAP_*` environment variables) and `parse_args`;
- `model`: device and model loading (no code from a model folder without `--trust-remote-code`);
- `catalogue`: galleries, their `CIRIndex` (saved, cached or built) and the example triplets;
- `search`: `SearchEngine`, one query against a catalogue;
- `ui`: the page and its handlers (`/search` and `/upload` API endpoints);
- `startup`: `create_app` and `launch`; `cli`: `facap-app`; `space`: `facap-app space DIR` (a Space folder).

The root `app.py` is the thin entry point (the Hugging Face Spaces convention).
"""

from .errors import AppError
from .options import AppOptions, parse_args

__all__ = ["AppError", "AppOptions", "parse_args"]
