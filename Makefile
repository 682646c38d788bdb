VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo demo-lm bench bench-nmt bench-products clean

setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest -q -rs tests

demo: setup
	$(PY) -m onmt_structdrop.tools.nmt_demo

demo-lm: setup
	$(PY) -m onmt_structdrop.tools.lm_demo

bench: setup
	$(PY) -m onmt_structdrop.tools.bench --device cpu --layers 2 --hidden 650 --batch 20 --seq 35 \
	    --dropout 0.5 --recurrent-dropout 0.5 --json bench-cpu.json

bench-nmt: setup
	$(PY) -m onmt_structdrop.tools.nmt_bench --device cpu --threads 1 --json bench-nmt-cpu.json

bench-products: setup
	$(PY) -m onmt_structdrop.tools.product_bench --json bench-products-cpu.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
