# DOC Explorer: `make app` sets up and starts the dashboard, `make test` sets up and runs the tests.
.PHONY: setup app test bench bench-ovr

PORT ?= 8501
# The dashboard listens on this address only: 127.0.0.1 = this machine; `make app ADDRESS=0.0.0.0` serves on every
# network interface (see "Limits and safety" in the README first).
ADDRESS ?= 127.0.0.1

setup:
	@bash scripts/setup.sh

app: setup
	.venv/bin/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python -m doc_core benchmark --protocol tutorial --json results-tutorial.json --roc-html results-tutorial-roc.html

bench-ovr: setup
	.venv/bin/python -m doc_core benchmark --protocol one-vs-rest --json results-one-vs-rest.json --roc-html results-one-vs-rest-roc.html
