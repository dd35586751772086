# Fresh machine: `make reproduce` (set up + every table of the smoke profile), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
PROFILE ?= smoke

.PHONY: setup setup-test reproduce test clean-runs

# Two stamps: `make reproduce` installs the package alone; `make test` adds the test tools and the cluster
# executor plugins the SLURM and Kubernetes tests drive. Snakemake imports every installed executor plugin at
# each start (about 1 s of a no-op rerun here), so a machine that only reproduces does not carry them; a
# cluster user installs them with `pip install -e '.[cluster]'` (README, Cluster).
setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# A new .venv takes about 6.5 GiB: torch 2.14.1 is pinned (pyproject.toml) and its build brings the
# CUDA libraries. Check for room first, so a full disk is one message and not a pip OSError mid-install.
SETUP_MIN_FREE_GIB ?= 8
define CHECK_FREE_SPACE
import os, shutil, sys
where = os.path.abspath("$(VENV)")
while not os.path.isdir(where):  # the nearest folder that exists: the one pip will fill
    where = os.path.dirname(where)
free = shutil.disk_usage(where).free / 2**30
if free < $(SETUP_MIN_FREE_GIB):
    sys.exit(f"make setup: {free:.1f} GiB free in {where}, but a new $(VENV) needs about $(SETUP_MIN_FREE_GIB) GiB "
             "(torch 2.14.1 with its CUDA libraries). Free some space there, or set VENV= to a disk with room.")
endef
export CHECK_FREE_SPACE

# torch/torchvision are pinned in pyproject.toml; pip takes them from the machine's wheel index.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || { python3 -c "$$CHECK_FREE_SPACE" && python3 -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Snakemake's job rate limit (default 100/1s) re-runs its scheduler once per timespan for every job that has
# finished, so on the ~250-job smoke DAG its own CPU grows to a third of a core (docs/costs.md, "Snakemake's
# own share"); a 10-s timespan makes those rounds ten times rarer. Its cost: Snakemake exits up to 10 s after
# the last job. Jobs here start far slower than 1000 per 10 s, so the limit itself never binds.
JOB_RATE ?= 1000/10s

reproduce: setup
	$(VENV)/bin/snakemake --cores $(CORES) --max-jobs-per-timespan $(JOB_RATE) --config profile=$(PROFILE)

test: setup-test
	$(PY) -m pytest -q -n 2 --dist loadgroup

clean-runs:
	rm -rf runs/$(PROFILE) .snakemake/incomplete
