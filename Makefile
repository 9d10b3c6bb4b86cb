# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/maskdit train --preset digits run_dir=runs/digits $$(test -d runs/digits && echo --resume)
	$(BIN)/maskdit sample runs/digits --num 100 --out runs/digits/samples.png --overwrite
	$(BIN)/maskdit eval runs/digits --num 500 --metrics domain_fid,pr,class

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/maskdit bench --preset DiT-S/2 --input 4x32x32 --batch 8

clean:
	rm -rf runs
