# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo bench-external bench-speed clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[test,data]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest

demo: install
	mkdir -p out/demo
	$(VENV)/bin/autovit-nas spaces
	$(VENV)/bin/autovit-lat hw list
	$(VENV)/bin/autovit-lat estimate autovit:xxs --hw iphone13 --plot out/demo/autovit_xxs_iphone13.png
	$(VENV)/bin/autovit-lat compare autovit:xxs autovit:xs autovit:s timm:mobilevit_xxs timm:mobilevit_xs \
		timm:mobilenetv3_large_100 timm:deit_tiny_patch16_224 --hw iphone13 --hw v100 --plot out/demo/breakdown.png
	rm -rf out/demo/supernet
	$(VENV)/bin/autovit-nas train --space xxs --data mnist5k --epochs 2 --eval-random 1 --out out/demo/supernet
	$(VENV)/bin/autovit-nas eval --supernet out/demo/supernet/last.ckpt --arch min
	$(VENV)/bin/autovit-nas export --supernet out/demo/supernet/last.ckpt --arch min --format onnx --out out/demo --force
	$(VENV)/bin/autovit-lat estimate out/demo/min.onnx --hw iphone13
	rm -rf out/demo/search
	$(VENV)/bin/autovit-nas search --supernet out/demo/supernet/last.ckpt --hw iphone13 --latency-budget 3ms \
		--population 8 --generations 2 --parents 3 --coarse 2000 --val-images 200 --out out/demo/search
	@echo "demo pictures: out/demo/breakdown.png out/demo/autovit_xxs_iphone13.png out/demo/search/pareto.png"

bench-external: install
	$(PY) benchmarks/external.py

bench-speed: install
	$(PY) benchmarks/estimate_speed.py

clean:
	rm -rf $(VENV) out build *.egg-info
