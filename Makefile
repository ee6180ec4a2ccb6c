# Everything bootstraps itself from the lock file: a machine needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 5006
# a closed tab's session (and its MD) ends within about a second, not Bokeh's default ~30 s
APP_SESSION_OPTIONS := --check-unused-sessions 1000 --unused-session-lifetime 1000

.PHONY: install test test-fast app notebooks bench lock clean models refined-models viz-bundle

install: $(INSTALLED)

# The lock pins the core and every extra ([all]: app, explore, xtb) plus dev, so this is the
# `pip install 'so3krates[all,dev]'` environment at the locked versions.
$(INSTALLED): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(INSTALLED)

# Two pytest workers (pytest-xdist), one test file at a time each (a file's module fixtures, the
# trained models and servers, are built once), the longest files first (tests/conftest.py): much
# of a test's time is single-threaded XLA compilation, which a second worker overlaps.
# TEST_WORKERS=0 runs one process.
TEST_WORKERS ?= 2
test: $(INSTALLED)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m "not slow"

app: $(INSTALLED)
	$(BIN)/panel serve app/ --address $(HOST) --port $(PORT) \
		--allow-websocket-origin=$(HOST):$(PORT) --allow-websocket-origin=localhost:$(PORT) \
		$(APP_SESSION_OPTIONS)

# JupyterLab in notebooks/ on HOST:PORT (PORT 8888 unless given: `make notebooks PORT=8890`), with
# nothing that reaches the network: no news feed, no update check, no PyPI extension manager.
notebooks: PORT = 8888
notebooks: $(INSTALLED)
	cd notebooks && ../$(BIN)/python -m jupyterlab --no-browser --ServerApp.ip=$(HOST) --port=$(PORT) \
		--LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
		--LabApp.extension_manager=readonly $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(INSTALLED)
	$(BIN)/python bench/potential.py
	$(BIN)/python bench/md.py
	$(BIN)/python bench/relax.py
	$(BIN)/python bench/explore.py
	$(BIN)/python bench/app.py

# Re-pin every dependency, the extras' too (run after changing pyproject.toml; commit the result).
# uv keeps the versions already in requirements.lock unless pyproject.toml rules them out.
lock: $(INSTALLED)
	$(BIN)/python -m uv pip compile pyproject.toml --extra all --extra dev --python-version 3.11 \
		--output-file requirements.lock --no-header --quiet

clean:
	rm -rf $(VENV) .pytest_cache

# Rebuild so3krates/viz/static/ngl.bundle.js (NGL.js + the viewer's JS) from the pinned npm lock
# with esbuild; needs node and npm. Commit the bundle and its licence files with the change.
viz-bundle:
	cd so3krates/viz/js && npm ci --no-audit --no-fund && node build.mjs

# The shipped models (data/models/NAME): label with GFN2-xTB, train, evaluate, check 100 ps of
# MD at 300 and 500 K. Each model's exact commands land in data/models/NAME/recipe.sh.
SMALL_MODEL := --features 64 --layers 2 --degrees 1,2 --seed 0
models: $(INSTALLED)
	data/models/make_model.sh ethanol 1 "--frames 1000 --torsions 20 --conformer-relax-steps 100" \
		"--n-train 800 --n-valid 100 $(SMALL_MODEL) --batch-size 4 --lr 2e-3 --lr-decay-rate 0.1 --lr-decay-steps 100000 --valid-every 2000 --max-steps 150000"
	data/models/make_model.sh ac_ala3_nhme 2 "--frames 1200 --torsions 30 --conformer-relax-steps 100" \
		"--n-train 1000 --n-valid 100 $(SMALL_MODEL) --zbl --batch-size 1 --lr 1e-3 --lr-decay-rate 0.1 --lr-decay-steps 40000 --valid-every 2500 --max-steps 50000"
	data/models/make_model.sh dha 3 "--frames 1200 --torsions 30 --conformer-relax-steps 100" \
		"--n-train 1000 --n-valid 100 $(SMALL_MODEL) --batch-size 1 --lr 1e-3 --lr-decay-rate 0.1 --lr-decay-steps 35000 --valid-every 2500 --max-steps 45000"

# Refine the shipped Ac-Ala3-NHMe and DHA models where the explorer goes (`so3krates refine`),
# replacing each only where the refined model is no worse on any measure, else shipping it beside
# in data/models/NAME/refined/ (refine_model.sh; its recipe.sh ends with the commands, its round
# reports are in refinement/). Ac-Ala3-NHMe starts from a larger model (128 features, 3 layers)
# trained on its dataset plus 600 xTB-labelled distortions of its training frames (about 25 min of
# training); DHA from the shipped model. Each refinement plus its 100 ps MD checks: under an hour.
REFINE_OPTIONS := --walkers 2 --hops 12 --scheduler threads --displaced 4 --label-weight 3 \
	--steps 4000 --lr 2e-4 --lr-decay 0.1 --energy-weight 100 --batch-size 4
AC_ALA3_LARGE := --n-train 1000 --n-valid 100 --features 128 --layers 3 --degrees 1,2 --seed 0 --zbl --batch-size 1 \
	--lr 1e-3 --lr-decay-rate 0.1 --lr-decay-steps 40000 --energy-weight 20 --grad-clip 1 --valid-every 2500 \
	--max-steps 50000 --extra-train data/datasets/ac_ala3_nhme.rattled.extxyz --min-distance 0.5 --max-force 250
refined-models: $(INSTALLED)
	data/models/start_model.sh ac_ala3_nhme build/models/ac_ala3_nhme-128x3rc "$(AC_ALA3_LARGE)" \
		".venv/bin/python data/models/rattle_frames.py ac_ala3_nhme --frames 600"
	data/models/refine_model.sh ac_ala3_nhme "--rounds 2 $(REFINE_OPTIONS)" build/models/ac_ala3_nhme-128x3rc/best
	data/models/refine_model.sh dha "--rounds 2 $(REFINE_OPTIONS)"
