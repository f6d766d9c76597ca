# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SSA := $(VENV)/bin/ssa
STAMP := $(VENV)/.installed

.PHONY: install demo lint test test-quick bench clean explorer-assets

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# the distribution was named `ssa` before it became `stepwise-sa` (`ssa` on PyPI is another project, with the
	@# same import name): an install under the old name would declare ssa's plugins twice
	$(PY) -m pip uninstall --quiet --yes ssa 2>/dev/null || true
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@start=$$(date +%s); \
	$(SSA) analyse digits --images digits --targets all --branching 3 --out-dir demo-out/graphs --quiet && \
	$(SSA) compare demo-out/graphs/class-*.json --out-dir demo-out/compare && \
	$(SSA) explore demo-out/graphs/class-*.json --model digits --images digits --out demo-out/explorer.html && \
	$(SSA) report demo-out/graphs/class-*.json --model digits --images digits --out demo-out/report.html \
		--explorer demo-out/explorer.html && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; open the report: $(CURDIR)/demo-out/report.html" && \
	echo "and the interactive explorer: $(CURDIR)/demo-out/explorer.html"

# ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade), lint-imports (the layer contracts of
# docs/architecture.md) and mypy (strict on ssa/core and the plugin seams); all configured in pyproject.toml
LINTED := ssa backends plugins tests benchmarks scripts

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

# everything but the `slow` tests (end-to-end runs of 10 s or more), for a quick check while working
test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only -s

# Rebuild the explorer's front-end bundle (ssa/viz/explorer/static/) from frontend/explorer/ with the
# locked npm packages. Needs Node 20 and npm; CI does not (the bundle is committed).
explorer-assets:
	cd frontend/explorer && npm ci --no-audit --no-fund && node build.mjs

clean:
	rm -rf $(VENV) demo-out .pytest_cache
