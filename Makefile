# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.mliscan-installed
DEMO_OUT ?= demo-runs
# torch/torchvision are pinned here (and only here); pyproject.toml declares a range.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint typecheck format bench speed-table clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]' $(TORCH_PINS)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mliscan demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Static types alone (mypy, basic mode; [tool.mypy] in pyproject.toml); also part of lint.
typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The README's speed table from a benchmark run (bench/speed_table.sh; about an hour on 2 cores)
speed-table: $(STAMP)
	PY=$(BIN)/python bash bench/speed_table.sh

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache *.egg-info
