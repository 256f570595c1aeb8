# The two set-up commands of the README. Both work on a fresh machine with only
# Python 3.11, Java 17 and Maven: they create .venv, install recstream, fetch the Kafka
# broker from Maven Central, and run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.recstream-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-unit lint format typecheck bench bench-quick setup kafka-start kafka-stop kafka-status clean

demo: setup ## the main job: local broker, topics, worker, built-in catalog, recommendations
	$(BIN)/recstream demo

test: setup ## the test suite (starts the local broker when none answers)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup ## the broker-free suite (pure code, a few minutes): the fast lane while you work
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: setup typecheck ## ruff's checks and its formatter (check only) on the whole tree, mypy on the code (pyproject.toml [tool.ruff], [tool.mypy])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## rewrite the tree in ruff's format (what make lint checks)
	$(BIN)/ruff format .

# mypy reads the package as installed: recstream/ with the folders mapped into it
# (pyproject.toml [tool.setuptools.package-dir]), laid out here as links
TYPECHECK := build/typecheck/recstream
typecheck: setup ## mypy on the recstream package: streams/, scoring/, encoders/ (pyproject.toml [tool.mypy])
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	ln -s ../../../recstream/__init__.py $(TYPECHECK)/__init__.py
	for d in streams scoring encoders; do ln -s ../../../$$d $(TYPECHECK)/$$d; done
	$(BIN)/python -m mypy

RESULTS := bench/results
bench: setup ## the benchmarks of docs/benchmarks.md, one after the other (about 1 h on 2 cores); JSON in bench/results/
	deploy/kafka/kafka.sh start
	mkdir -p $(RESULTS)
	$(BIN)/python bench/topk.py --output $(RESULTS)/topk.json > /dev/null
	$(BIN)/python bench/encoders.py --output $(RESULTS)/encoders.json > /dev/null
	$(BIN)/python bench/pipeline.py --output $(RESULTS)/pipeline.json > /dev/null
	$(BIN)/python bench/memory.py --output $(RESULTS)/memory.json > /dev/null
	OUT=$(RESULTS) bash bench/replay.sh > /dev/null

bench-quick: setup ## smoke runs of the same scripts (minutes; figures not meaningful)
	deploy/kafka/kafka.sh start
	mkdir -p $(RESULTS)
	$(BIN)/python bench/topk.py --quick --output $(RESULTS)/topk-quick.json > /dev/null
	$(BIN)/python bench/encoders.py --quick --output $(RESULTS)/encoders-quick.json > /dev/null
	$(BIN)/python bench/pipeline.py --quick --output $(RESULTS)/pipeline-quick.json > /dev/null
	$(BIN)/python bench/memory.py --quick --output $(RESULTS)/memory-quick.json > /dev/null

setup: $(STAMP)
	deploy/kafka/kafka.sh fetch

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ann]'
	touch $(STAMP)

kafka-start:
	deploy/kafka/kafka.sh start
kafka-stop:
	deploy/kafka/kafka.sh stop
kafka-status:
	deploy/kafka/kafka.sh status

clean:
	deploy/kafka/kafka.sh stop || true
	rm -rf $(VENV) .kafka .recstream *.egg-info
