# callstream developer tasks. `make test` is the one command: venv, Kafka jars, then pytest.
# Needs Python >= 3.11, Java 17 and Maven (the broker runs from Maven Central jars, no Docker).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv jars test

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
