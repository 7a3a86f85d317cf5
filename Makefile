# callstream developer tasks. `make test` is the one command: venv, Kafka jars, then pytest.
# Needs Python >= 3.11, Java 17 and Maven (the broker runs from Maven Central jars, no Docker).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv jars test demo stop

venv: $(STAMP)

# Reinstall only when the project metadata or the pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

jars: venv
	$(VENV)/bin/callstream broker fetch

test: venv jars
	$(PY) -m pytest -q

# Broker + worker + a small synthetic workload; prints the worker's window stats.
demo: venv jars
	scripts/demo.sh

# Stop the demo worker and the local broker.
stop:
	-test -f var/demo/worker.pid && kill $$(cat var/demo/worker.pid) 2>/dev/null; rm -f var/demo/worker.pid
	-$(VENV)/bin/callstream broker stop
