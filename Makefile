# The two README commands: `make run` (install + main job) and `make test` (install + test suite).
# Both create or reuse .venv; the install reruns only when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install run test test-external test-models lint bench

$(STAMP): pyproject.toml
	@# bubblewrap gives the sandbox its strict tier; without it the sandbox uses the standard tier.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bubblewrap; }; }; } || \
		echo "note: bubblewrap not installed (apt-get install bubblewrap): the Python sandbox will use its standard tier"
	@# PostgreSQL (Debian's package) for the tests of the lake on a Postgres catalog, as clusters run it.
	@{ command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		command -v apt-get >/dev/null && { apt-get install -y -qq postgresql >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq postgresql; }; }; } || \
		echo "note: PostgreSQL not installed (apt-get install postgresql): the Postgres catalog tests will fail"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 11), "AutoTraj needs Python 3.11, got " + sys.version'
	$(VENV)/bin/pip install --quiet --upgrade pip
	# The local CPU wheel first, so no dependency can pull a CUDA build of torch.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: install
	$(VENV)/bin/autotraj quickstart

test: install
	$(VENV)/bin/python -m pytest

# The test suite's models (tests/fixtures/models, 2.4 MB, committed): rebuild them with the user's command
# when the bootstrap recipe changes (the suite then says so), and commit the result.
test-models: install
	rm -rf .test-models && AUTOTRAJ_HOME=$(CURDIR)/.test-models $(VENV)/bin/autotraj bootstrap --size test
	rm -rf tests/fixtures/models && mkdir -p tests/fixtures/models
	cp -r .test-models/models/bootstrap-test-s0-v* tests/fixtures/models/ && rm -rf .test-models

test-external: install
	$(VENV)/bin/python -m pytest -m external

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/python benchmarks/lake.py
	$(VENV)/bin/python benchmarks/sandbox.py
