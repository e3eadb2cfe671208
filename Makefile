# vidcap: `make demo` (set-up + the whole system on the built-in dataset), `make test` (set-up + tests).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO ?= demo

.PHONY: setup system demo test lint docs wheel bench gpu-check clean

setup: system $(STAMP)

# System tools: ffmpeg always; a Java runtime only if none is present (pycocoevalcap needs one);
# Chromium and its driver for the test that drives `caption serve`'s page (Debian's packages).
system:
	@command -v ffmpeg >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg; }
	@command -v java >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq default-jre-headless; }
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

# torch/torchvision first and exactly (never let pip resolve torch: it pulls several GB), then the project.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The whole system on the built-in dataset: the realistic world (noise, flicker, camera motion, photos,
# clutter, distractors, occlusion, blur) -> shards -> stages 1, 2, 3 (cpu-small) -> test evaluation after
# each stage (all clips, seen / unseen combinations, per nuisance) and on a clean-world test set ->
# robustness of the stage-3 model -> probes of the CNN before / after stage 3 -> model folder -> caption
# real clips. About 13 minutes on 2 cores after set-up (10.7-11.1 min measured with the rendered clips reused, seeds 0-2; rendering adds ~2). `make demo DEMO=demo-s1 SEED=1`: another seed.
SEED ?= 0
DEMO_N := 1200
DEMO_CLEAN_N := 240
DEMO_CLIPS := $(wildcard ../shared/data/videos/bikes.mp4 ../shared/data/videos/carphone_pristine.mp4)
demo: setup
	@test -f $(DEMO)/synth/videodatainfo.json || $(VENV)/bin/pipeline synth --world real --out $(DEMO)/synth --clips $(DEMO_N) --seed $(SEED) --overwrite
	$(VENV)/bin/pipeline build --dataset msrvtt --root $(DEMO)/synth --out $(DEMO)/data --size 160 --shard-size 128
	$(VENV)/bin/pipeline inspect $(DEMO)/data
	@test -f $(DEMO)/clean-synth/videodatainfo.json || $(VENV)/bin/pipeline synth --world clean --test-only --out $(DEMO)/clean-synth --clips $(DEMO_CLEAN_N) --seed $$(($(SEED) + 1000)) --overwrite
	$(VENV)/bin/pipeline build --dataset msrvtt --root $(DEMO)/clean-synth --out $(DEMO)/clean-data --size 160 --shard-size 128
	@for s in 1 2 3; do \
	  $(VENV)/bin/train --stage $$s --data $(DEMO)/data --run $(DEMO)/run --preset cpu-small seed=$(SEED) || exit 1; \
	  echo "== realistic test split after stage $$s (beam 3) =="; \
	  $(VENV)/bin/train eval --ckpt $(DEMO)/run/stage$$s/best.pt --data $(DEMO)/data --split test --beam 3 || exit 1; \
	  echo "== clean-world test clips after stage $$s (beam 3) =="; \
	  $(VENV)/bin/train eval --ckpt $(DEMO)/run/stage$$s/best.pt --data $(DEMO)/clean-data --split test --beam 3 \
	    --no-meteor --out $(DEMO)/run/stage$$s/eval-clean-test-beam3 || exit 1; \
	done
	$(VENV)/bin/train robustness --ckpt $(DEMO)/run/stage3/best.pt --data $(DEMO)/clean-data --strengths standard \
	  --max-clips 120 --out $(DEMO)/run/stage3/robustness
	$(VENV)/bin/train probe --ckpt $(DEMO)/run/stage2/best.pt --ckpt $(DEMO)/run/stage3/best.pt --data $(DEMO)/data \
	  --split test --json $(DEMO)/run/probe.json
	$(VENV)/bin/train export --ckpt $(DEMO)/run/stage3/best.pt --out $(DEMO)/model --name demo-cpu-small --overwrite
	$(VENV)/bin/caption $(DEMO_CLIPS) $(DEMO)/synth/videos/video$$(($(DEMO_N) - 1)).mp4 --model $(DEMO)/model
	@echo "demo outputs: $(DEMO)/synth (videos), $(DEMO)/data (shards, attributes, CIDEr-D df, vocabulary),"
	@echo "  $(DEMO)/clean-data (a clean-world test set), $(DEMO)/run/stage{1,2,3} (checkpoints, metrics.jsonl,"
	@echo "  curves.png, tb/, eval-test-beam3/gallery.html, eval-clean-test-beam3/), $(DEMO)/run/stage3/robustness/"
	@echo "  (robustness.md, .png), $(DEMO)/model (the stage-3 model folder; caption serve --model $(DEMO)/model)"

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check vidcap shards caption pipeline model train evalkit tests bench examples

# The reference site (docs/ + mkdocs.yml) into site/, strict: a broken link or a page missing from the
# navigation fails. `make test` builds it too (tests/test_docs.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# One wheel, vidcap-VERSION-py3-none-any.whl, into dist/ (tests/test_wheel.py installs it in a fresh venv).
wheel: setup
	$(PY) -m pip wheel . --no-deps --no-build-isolation -w dist

# Every speed benchmark in bench/speed/ (docs/benchmarks.md), each as a module from the repository root;
# each writes bench/speed/NAME_report.json. serve_load trains a tiny model when given none (~20 s).
BENCH_SPEED := job1 cider train checkpoint ddp scale kv_cache cnn_layout serve_load trunk
bench: setup
	@for b in $(BENCH_SPEED); do echo "== bench.speed.$$b =="; $(PY) -m bench.speed.$$b || exit 1; done

# The GPU check (docs/benchmarks.md, "The GPU check"): on a GPU machine `make gpu-check` runs DALI's
# mixed decode, stages 1-3 in fp32 and bf16, a 1-process NCCL group and one loader=dali epoch within
# --budget-s (300 s), and writes bench/acceptance/gpu_report.{json,md}; `make gpu-check ARGS=--dry-run` is the CPU
# rehearsal that `make test` also runs (tests/test_gpu_check.py). The script exits 0 pass, 1 a check failed,
# 2 misconfigured (make turns any failure into its own 2: run the script itself to tell them apart).
ARGS ?=
gpu-check: setup
	$(PY) -m bench.acceptance.gpu_check $(ARGS)

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache test-artifacts site dist build bench/acceptance/gpu_check_work
