# make install: .venv with memaudit and everything it needs (idempotent)
# make demo:    the built-in audit on the digits        make test: the test suite (installs chromium if root)
# GPU machines: make install FAISS=gpu CONSTRAINTS=     (CUDA torch and faiss-gpu)
PYTHON ?= python3
VENV ?= .venv
FAISS ?= cpu
CONSTRAINTS ?= constraints-cpu.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.memaudit-installed-$(FAISS)

.PHONY: install browser demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[$(FAISS),test]"
	rm -f $(VENV)/.memaudit-installed-*
	touch $@

demo: install
	$(BIN)/memaudit demo --out runs/demo

# The report tests drive Debian's Chromium (Playwright's own browser downloads cannot work offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: could not install Debian's chromium; the browser tests will be skipped (and fail under CI=true)"

test: install browser
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/knn_throughput.py
	$(BIN)/python benchmarks/approx_search.py
	$(BIN)/python benchmarks/feature_extraction.py
	$(BIN)/python benchmarks/store_memory.py
	$(BIN)/python benchmarks/decode_throughput.py
	$(BIN)/python benchmarks/exact_criteria.py
	$(BIN)/python benchmarks/distributed_runs.py
	$(BIN)/python benchmarks/concurrent_cache.py
	$(BIN)/python benchmarks/verdict_fpr.py

clean:
	rm -rf runs .pytest_cache
