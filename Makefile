# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-output
PORT   ?= 8000

.PHONY: demo test install install-test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e . --config-settings editable_mode=strict

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=strict

# The main job: simulate a shop, train both heads tracked in MLflow (SQLite store
# ./mlflow.db), register and promote the model, score every customer, then serve the
# champion over HTTP until Ctrl-C.
demo: install
	$(BIN)/lifecycle simulate --customers 20000 --seed 7 --out $(DEMO)/data \
		--as-of 2024-09-30 --as-of 2024-12-31
	$(BIN)/lifecycle features --events $(DEMO)/data/events.parquet --as-of 2024-12-31 \
		--out $(DEMO)/features.parquet
	$(BIN)/lifecycle train --events $(DEMO)/data/events.parquet --labels $(DEMO)/data/labels.csv \
		--register lifecycle --promote-if-better
	$(BIN)/lifecycle score --events $(DEMO)/data/events.parquet --model models:/lifecycle@champion \
		--as-of 2024-12-31 --out $(DEMO)/scores.csv
	@echo
	@echo "Done. What was made:"
	@echo "  events, labels, oracle:  $(DEMO)/data/"
	@echo "  features:                $(DEMO)/features.parquet"
	@echo "  scores:                  $(DEMO)/scores.csv"
	@echo "  MLflow runs and models:  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db  (then http://127.0.0.1:5000)"
	@echo "  scoring API:             http://127.0.0.1:$(PORT)/docs  (API key: demo-key; Ctrl-C stops it)"
	@echo
	LIFECYCLE_API_KEYS=demo-key $(BIN)/lifecycle serve --model models:/lifecycle@champion --port $(PORT)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two workers, a test file each at a time (module fixtures are built once): much of the
# suite waits on servers, subprocesses and sockets. `.venv/bin/pytest` alone runs serially.
test: lint
	$(BIN)/pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache
