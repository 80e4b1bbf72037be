# `make test` and `make demo` each do the whole set-up on a fresh machine: system packages (ffmpeg),
# a virtual environment in .venv, every Python package, the project itself (editable), then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo bench gpu-check setup system-deps clean

setup: $(STAMP) system-deps

# Reinstall when the pinned requirements or the packaging files change; the stamp makes repeated runs instant.
$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The ffmpeg program comes from the system package manager (pip's ffmpeg-python is only the binding).
system-deps:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ffmpeg >/dev/null; }

test: setup
	$(PY) -m pytest tests/ -q

bench: setup
	$(PY) -m pytest bench/ -q

# On a bare GPU machine (torch, Triton, pytest only; no venv, no install): kernel tests, loss benchmark, train step.
# Deliberately not depending on setup: it runs with GPU_PYTHON if set, else the first of python3, python that
# imports torch. Writes bench/results/*_gpu.json (≤ 8 min on one H100; `--plan` shows the cells and budgets).
gpu-check:
	@py="$(GPU_PYTHON)"; \
	if [ -z "$$py" ]; then for candidate in python3 python; do \
	  if $$candidate -c "import torch" >/dev/null 2>&1; then py=$$candidate; break; fi; done; fi; \
	if [ -z "$$py" ]; then echo "make gpu-check: error: neither python3 nor python imports torch" >&2; exit 2; fi; \
	echo "$$py bench/gpu_check.py"; $$py bench/gpu_check.py

# Also rewrites docs/demo/results.md, the README's results block and docs/demo/*.png from this run.
demo: setup
	$(PY) -m haf.reporting.demo --update-docs

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
