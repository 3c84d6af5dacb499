# flare_apps/apps.mk — catalog app targets; `include flare_apps/apps.mk` from the main Makefile.
PYTHON ?= .venv/bin/python

DATA_DIR ?= .demo/data
DATA_SITES ?= 2
DATA_SEED ?= 0
DATA_ALPHA ?= 0.5
DATA_SAMPLES ?= 600
DATA_FORMAT ?= csv
DATA_ARGS ?=

.PHONY: data pretrained test-apps test-apps-e2e bench-apps

data: ## synthetic non-IID protein-localisation data: $(DATA_DIR)/site-N.$(DATA_FORMAT), test set, manifest.json
	$(PYTHON) -m flare_operator.datagen --sites $(DATA_SITES) --out $(DATA_DIR) --seed $(DATA_SEED) \
	  --alpha $(DATA_ALPHA) --samples-per-site $(DATA_SAMPLES) --format $(DATA_FORMAT) $(DATA_ARGS)

pretrained: ## the tiny ESM2 pretrained by MLM on a public synthetic corpus (stand-in for facebook/esm2_*), cached by content; prints its folder (use it as pretrainedPath)
	@$(PYTHON) hack/pretrained.py

test-apps: ## unit tests of the catalog, job builder, data generator, DP and aggregation
	$(PYTHON) -m pytest -q tests/unit/test_catalog.py tests/unit/test_nvflare_job.py tests/unit/test_datagen.py \
	  tests/unit/test_datagen_bad_data.py tests/unit/test_dp.py tests/unit/test_aggregation.py \
	  tests/unit/test_sample_dp.py tests/unit/test_pretrain.py

test-apps-e2e: ## esm2-finetune as real NVFlare federations (simulator + provisioned POC), CPU, a few minutes
	$(PYTHON) -m pytest -q -m e2e tests/e2e/test_esm2_app.py

bench-apps: ## throughput, bytes per round, value of federation over 4 seeds, the demo's job under DP over 3 seeds (ratios against same-run baselines; ~50 min on 2 cores)
	$(PYTHON) bench/esm2_bytes.py
	$(PYTHON) bench/esm2_throughput.py
	$(PYTHON) bench/esm2_federation_value.py
	$(PYTHON) bench/esm2_federation_value.py --dp --seeds 0 1 2
