# Set-up and entry points. `make test` and `make demo` create (or reuse) .venv and install the project first.
# torch is installed before the project so that pip takes the pinned wheel, not a multi-GB CUDA build.
# GPU users: `make test TORCH_SPEC=torch` (or any torch build for their CUDA) before the first run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.facap-installed

.PHONY: setup test demo paper app bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# The paper's experiment grid on the synthetic stand-ins (scripts/plans/paper-synthetic.yaml; docs/paper.md).
# A rerun continues where a killed one stopped; results in $(PAPER_OUTPUT)/results.{md,json,png}.
PAPER_OUTPUT ?= paper_output
paper: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
		TOKENIZERS_PARALLELISM=false $(PY) scripts/paper.py --plan paper-synthetic --out $(PAPER_OUTPUT)

app: setup
	HF_HUB_OFFLINE=1 $(PY) app.py

bench: setup
	for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info
