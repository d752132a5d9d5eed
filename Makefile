# `make run` sets everything up and runs the default experiment; `make test` runs the tests;
# `make deploy` runs the same experiment on a local SuperLink + SuperNodes (TLS).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
ARGS ?=
# CPU-only machines: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu (a ~200 MB torch
# instead of PyPI's ~6.6 GB CUDA build)
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: install run deploy test lint
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_FROM) torch==2.14.1 torchvision==0.29.1 || $(PY) -m pip install --quiet $(TORCH_FROM) "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

run: install
	$(PY) -m pipeline.run $(ARGS)

deploy: install
	$(PY) scripts/deploy_local.py $(ARGS)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
