# Each target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean vendor-ort

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The tested torch pair; pip serves it from the local cache where one exists.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pneumoscan predict examples/

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/pneumoscan bench

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

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
	rm -rf $(VENV) .pytest_cache .ruff_cache
