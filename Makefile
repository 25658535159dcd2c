# make demo : install, prepare the sample cohort, score it, write the report, start the review app
#             (the faithfulness checks run in the background once the app is up)
# make test : install, run the whole test suite
# make screenshots : browser test on the demo results, screenshots into docs/
# make docs : the documentation site (mkdocs.yml, docs/) into site/, strict: a warning fails
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo
PORT   ?= 8501
CASES  ?= 40
WORKERS ?= 2
SANITY ?= gradcam,gradcam++,hirescam,layercam,integrated_gradients
# training arithmetic of make bench-discovery: bfloat16 is about 1.7x as fast per epoch on a CPU
# with AMX and about 1.35x on one with AVX512-BF16 only (docs/benchmarks/discovery.md#bfloat16,
# #channels-last); BENCH_PRECISION=float32 on a CPU with neither
BENCH_PRECISION ?= bfloat16

.PHONY: install runtime test demo demo-scored demo-data demo-sanity screenshots bench bench-discovery bench-discovery-suite docs clean

# pip byte-compiles every file it installs, one at a time (44 s of a 101 s install on 2 cores);
# --no-compile and one compileall on all cores leave the same .pyc files in 25-30 s
# (docs/guide/install-and-commands.md#install). The demo needs only the runtime dependencies; make test
# adds the test extras (pytest, Playwright, MkDocs, the oracles) on top.
PIP     := $(PY) -m pip install -q --disable-pip-version-check --no-compile -c constraints.txt
COMPILE := $(PY) -m compileall -qq -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') || true
RUNTIME := $(VENV)/.installed-runtime

$(RUNTIME): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -e .
	$(COMPILE)
	@touch $(RUNTIME)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -e '.[test]'
	$(COMPILE)
	@touch $(STAMP) $(RUNTIME)

runtime: $(RUNTIME)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

demo-scored: runtime
	@test ! -d $(DEMO)/results || $(PY) -m discovery.batch.current $(DEMO)/results || (echo "scoring the demo again" && rm -rf $(DEMO)/results)
	@test -f $(DEMO)/cohort/truth.json || $(VENV)/bin/discovery sample $(DEMO)/cohort --cases $(CASES) --seed 7 --config sample_data/demo_model/cohort.json --workers $(WORKERS)
	@test -f $(DEMO)/results/findings.csv || $(VENV)/bin/discovery score $(DEMO)/cohort --out $(DEMO)/results --labels $(DEMO)/cohort/truth.csv --workers $(WORKERS)

demo-data: demo-scored
	$(VENV)/bin/discovery report $(DEMO)/results --format html --out $(DEMO)/results/report.html

# the faithfulness checks, in the foreground (make demo runs them behind the app)
demo-sanity: demo-data
	$(PY) -m discovery.background $(DEMO)/results --if-needed --methods $(SANITY) --max-nodules 50 --report $(DEMO)/results/report.html

# the app comes up right after scoring; the report and the faithfulness checks follow behind it
demo: demo-scored
	@echo "report: $(DEMO)/results/report.html (written behind the app, and again when the faithfulness checks are done)"
	$(VENV)/bin/discovery app $(DEMO)/results --port $(PORT) --sanity $(SANITY) --sanity-max-nodules 50 --report $(DEMO)/results/report.html

# the test copies the results folder before writing its review into it
screenshots: install demo-sanity
	DISCOVERY_BROWSER_RESULTS=$(DEMO)/results DISCOVERY_SCREENSHOTS=docs \
		$(PY) -m pytest -q tests/test_browser.py

bench: install
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/explain.py

bench-discovery: install
	$(PY) benchmarks/discovery.py --seed 2 --precision $(BENCH_PRECISION)

# issue 18's whole benchmark: three seeds, both conditions, from scratch (fresh model cache)
BENCH_SEEDS ?= 27 28 29
bench-discovery-suite: install
	rm -rf benchmarks/.cache/suite
	$(PY) benchmarks/discovery.py suite --seeds $(BENCH_SEEDS) --precision $(BENCH_PRECISION) --out benchmarks/.cache/suite --cache benchmarks/.cache/suite/models

docs: install
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(DEMO) .pytest_cache
