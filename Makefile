# Each target installs what it needs first, so both work on a fresh machine:
#   make demo   the inference install only (no PyTorch) in .venv-infer, then screens examples/
#   make test   everything (training extra + dev tools) in .venv, then the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INFER := .venv-infer
INFER_STAMP := $(INFER)/.installed

.PHONY: demo test lint docs wheel-check bench clean vendor-ort

$(INFER_STAMP): pyproject.toml
	test -x $(INFER)/bin/python || $(PY) -m venv $(INFER)
	$(INFER)/bin/pip install -q --upgrade pip
	$(INFER)/bin/pip install -q -e .
	touch $(INFER_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The tested torch pair; pip serves it from the local cache where one exists.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(INFER_STAMP)
	$(INFER)/bin/pneumoscan predict examples/

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/pneumoscan bench

# ruff, then the import-linter contracts of pyproject.toml (the layers of src/pneumoscan).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/lint-imports

# The documentation site under docs/ (mkdocs-material), every warning an error.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The wheel, installed into a clean virtual environment without torch: predict, explain, serve.
wheel-check: $(STAMP)
	PY=$(BIN)/python .ci/wheel_check

# The ONNX Runtime Web files the browser site ships are vendored (pinned, with their licence);
# this refreshes them from npm (needs npm). Then update the sha256s in VERSION.json.
ORT_WEB := 1.30.0
ORT_DIR := src/pneumoscan/web/vendor/onnxruntime-web
vendor-ort:
	tmp=$$(mktemp -d) && cd $$tmp && npm pack -q onnxruntime-web@$(ORT_WEB) >/dev/null \
	  && tar xzf onnxruntime-web-$(ORT_WEB).tgz \
	  && cp package/dist/ort.wasm.bundle.min.mjs package/dist/ort-wasm-simd-threaded.wasm \
	     $(CURDIR)/$(ORT_DIR)/ && rm -rf $$tmp
	cd $(ORT_DIR) && sha256sum ort.wasm.bundle.min.mjs ort-wasm-simd-threaded.wasm

clean:
	rm -rf $(VENV) $(INFER) .pytest_cache .ruff_cache dist site
