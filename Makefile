# The two commands of the README. Each makes its own virtual environment
# (.venv), installs modelfix, modelfix-jupyter and the test tools, then runs.
# llama-cpp-python compiles from source once; pip's wheel cache keeps it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml jupyter_ext/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./jupyter_ext
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m modelfix.testing.demo

test: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .demo .pytest_cache
