# make demo : create .venv, install kseg, train flags/strong.cfg on the embedded dataset, evaluate
# make test : create .venv, install kseg[test], run the test suite
# make clean: remove build artefacts (.venv, caches); trained runs stay
# make clean-runs: delete runs/ and exports/ (trained models) -- asks first
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean clean-runs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/train.py --flagfile=flags/strong.cfg --model_dir=runs/strong
	$(PY) scripts/evaluate.py --model_dir=runs/strong

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-runs:
	@printf 'Delete runs/ and exports/ (trained models)? [y/N] '; read answer; \
	  [ "$$answer" = y ] && rm -rf runs exports || echo kept
