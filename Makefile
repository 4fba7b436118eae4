# robustkit: `make demo` (set up + whole pipeline on bundled data), `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77,<81"   # >=77: builds the wheel (PEP 639 licence) offline in tests; <81: pkg_resources
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)          ## create .venv and install robustkit with its test tools

demo: $(STAMP)           ## 3 methods x 3 seeds on digits, FGSM + corruptions, report (~4 min on 2 CPU cores)
	$(VENV)/bin/robustkit demo $(ARGS)

# pytest-xdist processes for `make test`, one torch thread each (2 cores: 6.3-7.4 min instead of 11); 0: in this
# process, with torch's own thread count
TEST_WORKERS ?= 2

test: $(STAMP)           ## the test suite (CPU)
	$(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1 )$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: $(STAMP)          ## the CPU benchmarks (see bench/RESULTS.md)
	$(PY) bench/bench_corruptions.py
	$(PY) bench/bench_fgsm.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_methods.py
	$(PY) bench/bench_imagenet.py

clean:
	rm -rf $(VENV) .pytest_cache robustkit.egg-info
