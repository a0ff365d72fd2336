# boride: `make demo` runs the bundled example, `make test` runs the tests.
# Both set up a virtual environment in .venv first (once; again when pyproject.toml changes).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean image

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/boride run examples/pipeline.yaml --out out/example --force

lint: setup
	$(BIN)/ruff check boride tests bench examples docker
	$(BIN)/mypy
	$(BIN)/mypy --strict docker/serve_image.py

# boride's own image, boride/serve:latest (the CyanPrint CLI's daemon container), built on the
# local engine FROM the base image of .ci/docker-setup.sh; only what changed is rebuilt.
image: setup
	$(BIN)/python docker/serve_image.py

test: lint
	$(BIN)/pytest -q -ra

bench: setup
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/readiness.py
	$(BIN)/python bench/merge_archive.py
	$(BIN)/python bench/api_load.py
	$(BIN)/python bench/docker_build.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
