# make demo: set up, build, run the demo.   make test: set up, build, run every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU machine gets the CPU wheel of torch; where torch is already installed (a CUDA
# machine, say) the venv sees it through --system-site-packages and keeps it.
TORCH_SPEC ?= torch==2.13.0
DEPS := triton numpy ninja pybind11 setuptools wheel pytest pytest-benchmark hypothesis \
        tqdm matplotlib scikit-learn

.PHONY: setup build demo test test-python test-csrc bench clean

setup: $(VENV)/.installed

# Then the optional model sources (study, tests): the torchvision release paired with this
# torch (torch 2.x: torchvision 0.(x+15)), without its torch requirement so that torch stays,
# and timm.
$(VENV)/.installed: Makefile
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(DEPS)
	$(PY) -c "import torchvision" 2>/dev/null || $(PY) -m pip install -q --no-deps \
	  "torchvision==$$($(PY) -c 'import torch; print("0.%d.*" % (int(torch.__version__.split(".")[1]) + 15))')"
	$(PY) -m pip install -q timm
	touch $@

build: setup
	$(PY) setup.py -q build_ext --inplace

demo: build
	$(PY) -m maskops demo

# The torch-free kernels: CPU unit tests, and a compile check of the CUDA sources
# for sm_80/sm_90a wherever nvcc exists (no GPU needed).
test-csrc:
	@if command -v cmake >/dev/null; then \
	  cmake -S . -B cmake-build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && \
	  cmake --build cmake-build && ctest --test-dir cmake-build --output-on-failure; \
	else echo "cmake not found: skipping the standalone csrc build"; fi

test-python: build
	$(PY) -m pytest -q

test: test-csrc test-python

bench: build
	$(PY) -m maskops bench --quick
	$(PY) -m maskops bench --overhead

clean:
	rm -rf build cmake-build maskops/_C*.so *.egg-info
