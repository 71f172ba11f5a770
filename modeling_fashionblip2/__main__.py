"""`python -m modeling_fashionblip2 convert SRC OUT` (see `cli.py`)."""

from .cli import main

raise SystemExit(main())
