# Fresh machine: `make reproduce` (set up + every table of the smoke profile), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
PROFILE ?= smoke

.PHONY: setup reproduce paper test lint clean-runs

setup: $(VENV)/.installed

# torch/torchvision are pinned in pyproject.toml; pip takes them from the machine's wheel index.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

reproduce: setup
	$(VENV)/bin/snakemake --cores $(CORES) --config profile=$(PROFILE)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup

clean-runs:
	rm -rf runs/$(PROFILE) .snakemake/incomplete
