"""The metric's Space: evaluate's standard widget over the module in this folder."""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

# The module file next to this one (not a Hub id), so the Space serves exactly the code it holds.
module = evaluate.load(str(Path(__file__).with_name("cir_recall.py")))
launch_gradio_widget(module)
