# cellrep: `make demo` and `make test` work from a fresh clone (they install first).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
CELLREP_HOME ?= $(CURDIR)/.cellrep
export CELLREP_HOME

.PHONY: install demo test ui lint clean bench-sdf bench-search bench-image bench-train bench-plates bench-screen \
	bench-mixed bench-pyg bench-faults bench-ticks bench-statcell bench-load

$(STAMP): pyproject.toml
	@command -v gfortran >/dev/null 2>&1 || { \
	  echo "installing gfortran (escnn's py3nj compiles Fortran)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq gfortran; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq gfortran; fi; }
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver (the UI check opens the Dagster UI in a real browser)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver; fi; }
	@test -x $(PY) || { command -v $(PYTHON) >/dev/null 2>&1 && $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV); }
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first, pinned: on CPU machines this takes the CPU build instead of several GB of CUDA wheels
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	$(PIP) check
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cellrep demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

ui: $(STAMP)
	$(VENV)/bin/cellrep ui

# benchmarks (not tests): one command each, reference implementation in the same run
bench-sdf: $(STAMP)
	$(PY) benchmarks/bench_sdf.py

bench-search: $(STAMP)
	$(PY) benchmarks/bench_search.py

bench-image: $(STAMP)
	$(PY) benchmarks/bench_image_models.py

bench-train: $(STAMP)
	$(PY) benchmarks/bench_train.py

# a fresh storage root of its own: builds the base model, then six plates (two of them at the same time)
bench-plates: $(STAMP)
	rm -rf $(CURDIR)/.cellrep-bench-plates
	CELLREP_HOME=$(CURDIR)/.cellrep-bench-plates $(PY) benchmarks/bench_plates.py

# plates of two structures (punctate + polymorphic) on a storage root of their own: routing and hits per structure
bench-mixed: $(STAMP)
	rm -rf $(CURDIR)/.cellrep-bench-mixed
	CELLREP_HOME=$(CURDIR)/.cellrep-bench-mixed DAGSTER_HOME=$(CURDIR)/.cellrep-bench-mixed/dagster \
	  $(PY) benchmarks/bench_mixed_plate.py

# structure given shape (seed 003) on a storage root of its own: a coupled reference set, the stacked beta-VAE, and
# plates with a nucleus-size-only and a structure-only drug
bench-statcell: $(STAMP)
	rm -rf $(CURDIR)/.cellrep-bench-statcell
	CELLREP_HOME=$(CURDIR)/.cellrep-bench-statcell DAGSTER_HOME=$(CURDIR)/.cellrep-bench-statcell/dagster \
	  $(PY) benchmarks/bench_statcell.py

# 20 plates dropped at once under the running daemon (cellrep ui), `cellrep sql` readers polling meanwhile
bench-load: $(STAMP)
	rm -rf $(CURDIR)/.cellrep-bench-load
	CELLREP_HOME=$(CURDIR)/.cellrep-bench-load DAGSTER_HOME=$(CURDIR)/.cellrep-bench-load/dagster \
	  $(PY) benchmarks/bench_load.py

# cellrep's dense EdgeConv against torch-geometric's on the same graph and weights
bench-pyg: $(STAMP)
	$(PY) benchmarks/bench_pyg.py

# kill -9 at every write stage, then run again: identical to a run never killed?
bench-faults: $(STAMP)
	$(PY) benchmarks/bench_faults.py

# automation tick and landing sensor time with 10, 1,000 and 10,000 plate partitions
bench-ticks: $(STAMP)
	$(PY) benchmarks/bench_ticks.py

# held-out calibration and power: screens from the evaluation seed range (>= 900,000) on a storage root of their own
bench-screen: $(STAMP)
	$(PY) benchmarks/bench_screen.py --home $(CURDIR)/.cellrep-bench-screen

# what a machine with a GPU runs first (< 5 min): every model family trains, resumes, fine-tunes, embeds and is
# benchmarked on CUDA, GPU codes against CPU codes, paper-size step memory; CUDA parts skipped on a CPU
gpu-check: $(STAMP)
	$(PY) -m cellrep_core.gpucheck

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(CELLREP_HOME)
