# boride: `make demo` runs the bundled example, `make test` runs the tests.
# Both set up a virtual environment in .venv first (once; again when pyproject.toml changes).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean image

# bench/docker_models.py compares the Docker runtime's storage models: the bind-mount one from a
# worktree at the last commit before issue 11 (made here, outside this tree, with its own venv).
OLD_MODEL ?= ../boride-bind-mounts
OLD_MODEL_COMMIT := 4d80ef2

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

# The figures need matplotlib: the `bench` extra, not in `dev`.
bench: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/readiness.py
	$(BIN)/python bench/lifetimes.py --big 200
	$(BIN)/python bench/merge_archive.py
	$(BIN)/python bench/api_load.py
	$(BIN)/python bench/docker_build.py
	$(BIN)/python bench/shared_instances.py
	$(BIN)/python bench/cache_watch.py
	$(BIN)/python bench/merge_rename.py
	$(BIN)/python bench/cold_start.py
	$(BIN)/python docker/serve_image.py
	test -d $(OLD_MODEL) || git worktree add --detach $(OLD_MODEL) $(OLD_MODEL_COMMIT)
	$(MAKE) -C $(OLD_MODEL) setup
	$(BIN)/python bench/docker_models.py --old $(OLD_MODEL) --example

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
