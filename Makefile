# make install: .venv with memaudit and everything it needs (idempotent)
# make demo:    the built-in audit on the digits        make test: the test suite
# GPU machines: make install FAISS=gpu CONSTRAINTS=     (CUDA torch and faiss-gpu)
PYTHON ?= python3
VENV ?= .venv
FAISS ?= cpu
CONSTRAINTS ?= constraints-cpu.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.memaudit-installed-$(FAISS)

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[$(FAISS),test]"
	rm -f $(VENV)/.memaudit-installed-*
	touch $@

demo: install
	$(BIN)/memaudit demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/knn_throughput.py

clean:
	rm -rf runs .pytest_cache
