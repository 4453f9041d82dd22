# armbench-segmentation: install, run, test. Works on a fresh machine with Python 3.11.
PYTHON ?= python3
POETRY ?= $(shell command -v poetry 2>/dev/null || echo $(HOME)/.local/bin/poetry)
OUT ?= runs/demo

.PHONY: install poetry browser analyze test test-fast lint-requirements tools clean

## install: Poetry (if missing) and the project with its dev tools into .venv
install: poetry
	$(POETRY) config virtualenvs.in-project true --local
	$(POETRY) install --no-interaction --all-extras

poetry:
	@command -v poetry >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/poetry" ] || \
		(echo "Poetry not found: installing it with pip" && $(PYTHON) -m pip install --user --quiet poetry)

## browser: Debian's Chromium + ChromeDriver for the dashboard test, strace for the no-network test (needs root or sudo)
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && command -v strace >/dev/null 2>&1; then \
		echo "chromium, chromedriver and strace present"; \
	else \
		SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver strace; \
	fi

## analyze: the main job on the default (synthetic) data; prints where the dashboard is
analyze: install
	$(POETRY) run armbench analyze --synthetic --out $(OUT)

## install-train: the `train` extra (torch, torchvision, yolov5 model/loss code) into .venv with pip, for `armbench finetune`
install-train:
	.venv/bin/pip install -q -r requirements-train.txt
	.venv/bin/pip install -q --no-deps yolov5==7.0.14 ultralytics==8.4.190
	.venv/bin/python -c "from armbench_segmentation.training import require_train_extra; require_train_extra(); print('train extra OK')"

## test: everything CI runs: unit, end-to-end, browser, and the Tensorleap checks
test: install browser install-train
	$(POETRY) run python tools/sync_requirements.py --check
	$(POETRY) run pytest -q
	$(POETRY) run test

## test-fast: unit tests only (no model, no browser, no training / Ray / fresh venvs)
test-fast:
	$(POETRY) run pytest -q -m "not e2e and not slow"

## tools: the torch virtualenv for fine-tuning / export / golden fixtures (not runtime)
tools:
	bash tools/setup_venv.sh

clean:
	rm -rf .venv .pytest_cache .hypothesis
