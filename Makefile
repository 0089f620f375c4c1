# The two commands of the README. Each makes its own virtual environment
# (.venv), installs modelfix, modelfix-jupyter and the test tools, then runs.
# llama-cpp-python compiles from source once; pip's wheel cache keeps it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test check install clean rebuild-llama
LINTED := modelfix jupyter_ext tests benchmarks

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

# The gate CI runs before the tests: lint, formatting and types (versions pinned in the dev extra).
check: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# Rebuild llama-cpp-python from source with the CMAKE_ARGS given (the same version as installed):
#   make rebuild-llama CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
#   make rebuild-llama CMAKE_ARGS="-DGGML_CUDA=on"
# make passes CMAKE_ARGS to pip through the environment. --no-cache-dir: pip's wheel cache would
# hand back the build it kept from `make install`, whatever CMAKE_ARGS says.
rebuild-llama: $(STAMP)
	@test -n "$$CMAKE_ARGS" || { echo 'give CMAKE_ARGS, e.g. make rebuild-llama CMAKE_ARGS="-DGGML_CUDA=on"' >&2; exit 2; }
	$(BIN)/python -m pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python --no-deps \
		"llama-cpp-python==$$($(BIN)/python -m pip show llama-cpp-python | sed -n 's/^Version: //p')"

clean:
	rm -rf $(VENV) .demo .pytest_cache
