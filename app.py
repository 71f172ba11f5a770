"""Interactive composed image retrieval demo (the Hugging Face Spaces entry point): see `facap_app`.

    python app.py --model DIR_OR_ID --dataset DIR_OR_ID [--config dress-gallery] [--index [CONFIG=]DIR]

Installed, the same command is `facap-app ...`; options also come from FACAP_* variables (docs/app.md).
"""

import sys

from facap_app.cli import main

if __name__ == "__main__":
    sys.exit(main())
