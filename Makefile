# Two commands do all the set-up on a fresh clone:  `make run` (main job)  and  `make test` (test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install run test test-fast test-heavy lint bench clean mutate

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)

install: $(VENV)/.installed

# Main job: train the small score network on scikit-learn's digits (CPU, a few minutes); the EMA samples land in
# outputs/main/samples/final.png. Running it again resumes / re-samples the same run; delete outputs/main to restart.
run: install
	$(PY) train.py trainer=digits hydra.run.dir=outputs/main

# Whole suite, slow tests included (not the `heavy` 28x28 end-to-end trainings: `make test-heavy`, ~16 minutes on
# an idle 2-core machine). pytest's exit code 5 (no test collected) is not a failure.
test: install
	$(PY) -m pytest -m "not heavy" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

test-heavy: install
	$(PY) -m pytest -m heavy $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Mutation testing (mutmut 3, config in pyproject.toml [tool.mutmut]): small deliberate bugs in scoresde/sde,
# scoresde/sampling, losses.py and likelihood.py, each run against a fast selection of exact-oracle tests. Slow on 2
# cores (hours for everything): narrow it with a mutant-name glob, e.g.
#   make mutate MUTANTS='scoresde.sampling.correctors*'
# then `$(PY) -m mutmut browse` / `show NAME`. Survivors judged harmless go in tests/MUTANTS.md with the reason.
MUTANTS ?=
MUTATE_JOBS ?= 2
mutate: install
	SCORESDE_SHARED=$(abspath ../shared) OMP_NUM_THREADS=1 $(PY) -m mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS); \
	rc=$$?; $(PY) -m mutmut results; exit $$rc

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache mutants
