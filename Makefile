# `make test` and `make bench` build everything they need in .venv (torch 2.13.0, transformers 4.31.0).
# TORCH picks the torch wheel: pip gets the CPU build of torch==2.13.0 only where its index serves one (on
# plain PyPI, Linux gets the CUDA build, several GB); PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# in the environment offers it there.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
# What the CPU benchmark runs, sized to finish within about 5 minutes on 2 cores (compiles included): the
# embedded model, whose step is mostly per-kernel launch overhead, then a real checkpoint's width, SmolLM2-135M's
# (4 of its 30 layers, random weights), whose step is reading the weights. A shared machine's speed wanders by
# a third from minute to minute, so the modes' measured runs alternate.
BENCH_ARGS ?= --batch-size 4 --input-len 96 --max-new-tokens 64 --runs 5 --interleave
REAL_WIDTH_ARGS ?= --preset smollm2-135m --layers 4 --batch-size 1 --input-len 64 --max-new-tokens 32 --runs 3 --interleave

.PHONY: test test-fast docs bench bench-static install clean

$(DEPS): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" "transformers==4.31.0" "tokenizers<0.14" "huggingface_hub<1.0" \
		"libcst>=1.1" "packaging>=21" "filelock>=3.8" "tqdm>=4.60" "safetensors>=0.3" \
		"sentencepiece>=0.1.99" "matplotlib>=3.5" "pytest>=7,<9" "pytest-xdist>=3" "parso>=0.8" \
		"setuptools>=77" wheel
	touch $(DEPS)

# build/ goes first: setuptools would ship files from it that the source tree no longer has.
install: $(DEPS)
	rm -rf build
	$(BIN)/pip install -q --no-deps --no-build-isolation --force-reinstall .

# loadgroup: tests sharing an expensive module fixture (xdist_group) run in one worker, which builds it once.
# pytest 9 drops the group that pytest-xdist 3.8 writes into each test's id, so the tests spread over both
# workers and each builds the fixture (seen: two 100-second setups of test_precompiled's stored code): pytest<9.
# The 25 slowest tests are listed at the end: the suite must stay under 20 minutes on 2 cores.
test: install
	$(BIN)/pytest -n 2 --dist loadgroup --durations=25 tests

# The tests not marked slow (no compiles, downloads or environments): a quick loop while editing.
test-fast: install
	$(BIN)/pytest -n 2 --dist loadgroup -m "not slow" tests

# Rewrite the tables in the docs that restate code (exit codes, releases); tests/test_docs.py checks them.
DOCS := README.md $(wildcard docs/*.md)

docs: install
	$(BIN)/python -m patcher.doc_tables $(DOCS)

bench: install
	$(BIN)/llama-graph-patch apply
	$(BIN)/llama-graph-patch bench $(BENCH_ARGS) \
		--output-json results/bench.json --output-md results/bench.md --plot results/bench.png
	$(BIN)/llama-graph-patch bench $(REAL_WIDTH_ARGS) \
		--output-json results/bench-smollm2.json --output-md results/bench-smollm2.md --plot results/bench-smollm2.png

# The same workload with transformers' growing KV cache and with the static cache, the six runs
# interleaved in one bench so that both caches are compared under the same machine conditions.
STATIC_MODES := eager,max-autotune,reduce-overhead,eager+static,max-autotune+static,reduce-overhead+static

bench-static: install
	$(BIN)/llama-graph-patch apply --static-cache
	$(BIN)/llama-graph-patch bench $(BENCH_ARGS) --modes $(STATIC_MODES) --output-json results/static-cache.json \
		--output-md results/static-cache.md --plot results/static-cache.png

clean:
	rm -rf $(VENV) build dist *.egg-info results .pytest_cache
