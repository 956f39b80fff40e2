# make install: .venv with memaudit and everything it needs (idempotent)
# make demo:    the built-in audit on the digits        make test: the import layers, then the test suite
#                                                        (installs chromium if root)
# GPU machines: make install FAISS=gpu CONSTRAINTS=     (CUDA torch and faiss-gpu)
PYTHON ?= python3
VENV ?= .venv
FAISS ?= cpu
CONSTRAINTS ?= constraints-cpu.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.memaudit-installed-$(FAISS)

.PHONY: install browser demo lint-imports test bench clean

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

# The layers of docs/architecture.md (pyproject.toml's [tool.importlinter] contracts). import-linter
# reads a package from its own folder, so it runs in a view of the installed layout: memaudit/ with
# adapters/ and reports/ linked in where `pip install .` puts them (memaudit.adapters, memaudit.reports).
LINT_VIEW := $(VENV)/lint-view

lint-imports: install
	rm -rf $(LINT_VIEW) && mkdir -p $(LINT_VIEW)/memaudit
	ln -s $(CURDIR)/memaudit/* $(LINT_VIEW)/memaudit/
	ln -s $(CURDIR)/adapters $(LINT_VIEW)/memaudit/adapters
	ln -s $(CURDIR)/reports $(LINT_VIEW)/memaudit/reports
	cd $(LINT_VIEW) && $(CURDIR)/$(BIN)/lint-imports --no-cache --no-logo $(CURDIR)/pyproject.toml

test: install browser lint-imports
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
	$(BIN)/python benchmarks/audit_cost.py

clean:
	rm -rf runs .pytest_cache
