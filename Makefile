# Two commands set everything up on a fresh machine with Python 3.11 and gcc:
#   make search   -> .venv + package + extension, then a real search on the embedded dataset
#   make test     -> same set-up, then the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torchvision (transforms.v2 for ImageFolder data) needs the PyPI build of torch it was built against:
# torch 2.14.1 with its CUDA libraries (they run on CPU too; the registry's CPU wheel of torch 2.13 has
# no torchvision that loads beside it). torch 2.14.1 requires triton 3.8. Override e.g.
# TORCH_SPEC="torch==2.11.0 torchvision==0.26.0" TRITON_SPEC="triton==3.6.0" elsewhere.
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
TRITON_SPEC ?= triton==3.8.0
# The CUDA sources of fastdarts._C are built only where a GPU driver is (a CPU machine cannot run them;
# tests/test_cuda_compile.py still compiles them with nvcc -c).
FASTDARTS_SKIP_CUDA_BUILD ?= $(if $(wildcard /dev/nvidiactl),0,1)
export FASTDARTS_SKIP_CUDA_BUILD
STAMP  := $(VENV)/.fastdarts-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu)

.PHONY: search test test-threads bench bench-pytest checkstyle cuda-compile clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PY) -m pip install -q $(TORCH_SPEC) $(TRITON_SPEC)
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

search: $(STAMP)
	$(VENV)/bin/fastdarts search

test: $(STAMP)
	$(PY) -m pytest -q tests

# The suite with 1 and 2 intra-op threads, then torch's own default (OMP_NUM_THREADS unset, no pin):
# results must not depend on the thread count (tests/conftest.py reads FASTDARTS_TEST_THREADS).
# OpenMP's idle threads sleep instead of spinning (how they wait, not how work is split): on shared
# cores spinning made the 2-thread runs ~8x slower. Override with TEST_OMP_WAIT_POLICY=ACTIVE.
TEST_OMP_WAIT_POLICY ?= PASSIVE
test-threads: $(STAMP)
	FASTDARTS_TEST_THREADS=1 $(PY) -m pytest -q tests
	OMP_WAIT_POLICY=$(TEST_OMP_WAIT_POLICY) FASTDARTS_TEST_THREADS=2 $(PY) -m pytest -q tests
	env -u OMP_NUM_THREADS OMP_WAIT_POLICY=$(TEST_OMP_WAIT_POLICY) FASTDARTS_TEST_THREADS=default \
		$(PY) -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/fastdarts bench all

checkstyle: $(STAMP)
	$(VENV)/bin/ruff check fastdarts kernels tests benchmarks

# Compile (not link) the CUDA sources with nvcc against the installed torch headers.
cuda-compile: $(STAMP)
	$(PY) -m pytest -q tests/test_cuda_compile.py

clean:
	rm -rf build *.egg-info fastdarts/_C*.so

bench-pytest: $(STAMP)
	$(PY) -m pytest benchmarks -o python_files='bench_*.py' --benchmark-only
