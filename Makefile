# ferroserve: `make run` installs what is needed, builds and starts the server; `make test` runs every check.
#
# Native libraries come from pinned PyPI wheels installed into a venv outside the clone (reused across clones,
# keyed by version), and third_party/ links to them. .cargo/config.toml points ORT_DYLIB_PATH and LIBTORCH there.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

ORT_VERSION   := 1.31.1
TORCH_VERSION := 2.13.0
ONNX_VERSION  := 1.23.2
ONNXSCRIPT_VERSION := 0.7.2
# TorchServe's Python worker, for archives with their own handler; its wheel does not declare pyyaml, which its
# worker imports (ts/utils/util.py).
TORCHSERVE_VERSION := 0.12.0
PYYAML_VERSION     := 6.0.4
SCIPY_VERSION := 1.17.1
NUMPY_VERSION := 2.4.6
# The gRPC clients of `make grpc-test`: Triton's, and grpcio-tools to generate TorchServe's.
TRITONCLIENT_VERSION := 2.73.0
GRPCIO_VERSION       := 1.85.3
GRPCIO_TOOLS_VERSION := 1.81.1
PROTOBUF_VERSION     := 6.33.6
PYTHON  ?= python3
CACHE   ?= $(HOME)/.cache/ferroserve
# onnxruntime-gpu (CUDA execution provider) when nvidia-smi finds a GPU, else the CPU wheel.
ORT_FLAVOUR  := $(shell nvidia-smi -L >/dev/null 2>&1 && echo -gpu)
RUNTIME_VENV := $(CACHE)/venv-ort$(ORT_FLAVOUR)-$(ORT_VERSION)
TORCH_VENV   := $(CACHE)/venv-torch-$(TORCH_VERSION)
# The libtorch that the TorchScript plugin links (third_party/libtorch): where nvidia-smi finds a GPU, the torch
# wheel with its CUDA wheels (TORCH_VENV); elsewhere the torch wheel alone (--no-deps) with the two small CUDA
# libraries libtorch_cpu names (libcudart, libcupti; they load without a GPU): 3.8 GB of CUDA wheels less to
# download, and the plugin never opens libtorch_cuda without a GPU.
CUDA_RUNTIME_VERSION := 13.0.96
CUDA_CUPTI_VERSION   := 13.0.85
LIBTORCH_CPU_VENV := $(CACHE)/venv-libtorch-cpu-$(TORCH_VERSION)
LIBTORCH_VENV := $(if $(ORT_FLAVOUR),$(TORCH_VENV),$(LIBTORCH_CPU_VENV))
# With a GPU: the CUDA libraries of the torch wheel's nvidia-* wheels, where ONNX Runtime's CUDA provider finds
# them (nothing of libtorch is loaded for an ONNX model, so nothing else brings them into the process). Expanded
# when `run` starts, after deps-run installed them.
empty :=
space := $(empty) $(empty)
CUDA_LIBRARY_PATH = $(if $(ORT_FLAVOUR),$(subst $(space),:,$(wildcard $(TORCH_VENV)/lib/python3*/site-packages/nvidia/*/lib)))
MODEL_VENV   := $(CACHE)/venv-model-torch-$(TORCH_VERSION)-onnx-$(ONNX_VERSION)
SCIPY_VENV   := $(CACHE)/venv-scipy-$(SCIPY_VERSION)-numpy-$(NUMPY_VERSION)
GRPC_VENV    := $(CACHE)/venv-grpc-tritonclient-http-$(TRITONCLIENT_VERSION)-grpcio-$(GRPCIO_VERSION)
ORT_LIB := third_party/onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION)
TORCH_LIB := third_party/libtorch/lib/libtorch.so
TORCHSERVE_STAMP := $(TORCH_VENV)/.torchserve-$(TORCHSERVE_VERSION).stamp
CONFIG  ?= config/config.properties
BIN     := target/release/ferroserve

.PHONY: deps deps-run tools run build build-server plugin proto dist image-test test grpc-test fmt lint features deploy-check deploy-live gpu-bundle gpu-bundle-test bench bench-backend bench-e2e bench-adaptive bench-drift bench-obs bench-memory soak loadtest tune model drift-fixtures fuzz clean

## deps: what `make build` needs (deps-run), then torch==$(TORCH_VERSION) with its CUDA wheels and, beside it,
## torchserve and torch-model-archiver==$(TORCHSERVE_VERSION) (the Python worker of archives with their own handler:
## ferroserve's default python_executable; the tests of that worker need it)
deps: deps-run $(TORCHSERVE_STAMP)

## deps-run: install onnxruntime==$(ORT_VERSION) and the libtorch of the TorchScript plugin (LIBTORCH_VENV above;
## once each) and link third_party/onnxruntime and third_party/libtorch (the wheel's torch folder: lib/ and
## include/) to them
deps-run: $(ORT_LIB) $(TORCH_LIB)

$(RUNTIME_VENV)/.stamp:
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet onnxruntime$(ORT_FLAVOUR)==$(ORT_VERSION)
	touch $@

$(TORCH_VENV)/.stamp:
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet torch==$(TORCH_VERSION)
	touch $@

$(LIBTORCH_CPU_VENV)/.stamp:
	$(PYTHON) -m venv $(LIBTORCH_CPU_VENV)
	$(LIBTORCH_CPU_VENV)/bin/python -m pip install --quiet --no-deps torch==$(TORCH_VERSION) \
		nvidia-cuda-runtime==$(CUDA_RUNTIME_VERSION) nvidia-cuda-cupti==$(CUDA_CUPTI_VERSION)
	touch $@

# torch pinned again so that pip never moves it; the import proves the worker's modules are there.
$(TORCHSERVE_STAMP): $(TORCH_VENV)/.stamp
	$(TORCH_VENV)/bin/python -m pip install --quiet torch==$(TORCH_VERSION) torchserve==$(TORCHSERVE_VERSION) \
		torch-model-archiver==$(TORCHSERVE_VERSION) pyyaml==$(PYYAML_VERSION)
	$(TORCH_VENV)/bin/python -c 'import ts.model_service_worker, model_archiver, yaml'
	touch $@

# find_spec locates the package without importing torch (seconds saved on every relink; the CPU venv could not).
$(TORCH_LIB): $(LIBTORCH_VENV)/.stamp
	mkdir -p third_party
	ln -sfn "$$($(LIBTORCH_VENV)/bin/python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')" third_party/libtorch
	test -f $(TORCH_LIB)
	touch -h third_party/libtorch

$(ORT_LIB): $(RUNTIME_VENV)/.stamp
	mkdir -p third_party
	ln -sfn "$$($(RUNTIME_VENV)/bin/python -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')" third_party/onnxruntime
	test -f $(ORT_LIB)
	touch -h third_party/onnxruntime

## tools: Prometheus and promtool (Debian's prometheus package) for the metrics test and deploy/, when missing
tools:
	@{ command -v promtool && command -v prometheus; } >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
		|| echo "warning: cannot install prometheus; the promtool check will be skipped"

## build: the release binary and the TorchScript plugin beside it (target/release/libferroserve_torch.so, opened
## when the first TorchScript model loads)
build: build-server plugin

## build-server: onnxruntime and the release binary alone (it links neither libtorch nor CUDA); with a GPU, also
## the torch wheel with its CUDA wheels, whose libraries ONNX Runtime's CUDA provider loads. The wheels install
## while the binary builds (it needs none of them to build).
build-server:
	$(MAKE) --no-print-directory $(ORT_LIB) $(if $(ORT_FLAVOUR),$(TORCH_VENV)/.stamp) & wheels=$$!; \
	cargo build --release -p ferroserve --bin ferroserve || { wait $$wheels; exit 1; }; \
	wait $$wheels

## plugin: libtorch (LIBTORCH_VENV above) and the TorchScript plugin
plugin: $(TORCH_LIB)
	cargo build --release -p ferroserve-torch-plugin --lib

## run: start the server with $(CONFIG) (the bundled model signnet on 127.0.0.1:8080), after installing and
## building what its start-up models need and no more (`ferroserve runtimes` says what they run on): the binary
## and onnxruntime always, libtorch and the plugin for a TorchScript model (the bundled one on a GPU),
## torchserve's Python worker for an archive with its own handler
run: build-server
	runtimes=$$($(BIN) --ts-config $(CONFIG) runtimes | cut -d' ' -f3 | tr ',\n' '  ') || true; \
	if [[ " $$runtimes " == *" torchscript "* ]]; then $(MAKE) --no-print-directory plugin; fi; \
	if [[ " $$runtimes " == *" python "* ]]; then $(MAKE) --no-print-directory $(TORCHSERVE_STAMP); fi
	$(if $(CUDA_LIBRARY_PATH),LD_LIBRARY_PATH=$(CUDA_LIBRARY_PATH)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}) $(BIN) --ts-config $(CONFIG)

## test: formatting, clippy with -D warnings, every cargo feature combination, every test, and the checks of
## deploy/ (manifests and rules, then a live Prometheus against the server), and the images, built from the debug
## binaries the tests built (a release build of their own made CI too long; `make image-test` alone builds release)
test: deps tools fmt lint features
	cargo build -p ferroserve-torch-plugin
	cargo test --workspace --all-targets
	cargo test --workspace --doc
	$(MAKE) grpc-test deploy-check deploy-live
	$(MAKE) image-test DIST_PROFILE=dev

$(GRPC_VENV)/.stamp:
	$(PYTHON) -m venv $(GRPC_VENV)
	$(GRPC_VENV)/bin/python -m pip install --quiet "tritonclient[grpc,http]==$(TRITONCLIENT_VERSION)" \
		grpcio==$(GRPCIO_VERSION) grpcio-tools==$(GRPCIO_TOOLS_VERSION) protobuf==$(PROTOBUF_VERSION) \
		numpy==$(NUMPY_VERSION)
	touch $@

## proto: rewrite the gRPC code committed in server/src/proto/ from the protos in server/proto/ (after changing one;
## `cargo test --test proto` fails while they disagree)
proto:
	FERROSERVE_UPDATE_PROTO=1 cargo test -p ferroserve --test proto

## grpc-test: tritonclient.grpc==$(TRITONCLIENT_VERSION), unchanged, and a client generated with grpcio-tools from
## TorchServe's protos, against the debug ferroserve; then tritonclient.http and .grpc with ssl=True against it
## serving TLS (server/tests/python_grpc/; installs its venv under $(CACHE))
grpc-test: deps $(GRPC_VENV)/.stamp
	cargo build --bin ferroserve
	FERROSERVE_BIN=target/debug/ferroserve PYTHON=$(GRPC_VENV)/bin/python bash server/tests/python_grpc/run.sh

## dist: the release binaries and the native libraries the images copy, in dist/linux-<arch>/ (DIST_CUDA=1 adds
## the CUDA libraries of the torch wheel, for the cuda image; DIST_ARCH=arm64 cross-builds the slim binary for
## linux/arm64; DIST_PROFILE=dev takes the debug binaries, as `make test` does); docker/dist.sh says what goes where
DIST_CUDA ?= 0
DIST_ARCH ?=
DIST_PROFILE ?= release
dist: deps
	DIST_CUDA=$(DIST_CUDA) DIST_ARCH=$(DIST_ARCH) DIST_PROFILE=$(DIST_PROFILE) bash docker/dist.sh

## image-test: hadolint and compose validation, then the cpu and slim images built with podman (installed when
## missing; no registry needed) and run for real: user, read-only root, predictions, key, health, SIGTERM, compose
image-test: dist
	bash docker/image-test.sh

# The GPU bundle (README "The GPU bundle"): ferroserve for a GPU host with torch $(GPU_BUNDLE_TORCH) installed and no
# Rust or network, its TorchScript plugin built against that torch's libtorch (gpu-bundle/plugin-torch-2.11, tch
# 0.24, a build of its own). The libtorch comes from the torch wheel without its CUDA wheels, as LIBTORCH_CPU_VENV
# (torch 2.11 names the same cudart and cupti as 2.13); ONNX Runtime from the CPU wheel, whatever this machine has.
GPU_BUNDLE_TORCH := 2.11.0
LIBTORCH_GPU_BUNDLE_VENV := $(CACHE)/venv-libtorch-cpu-$(GPU_BUNDLE_TORCH)
LIBTORCH_GPU_BUNDLE = $(wildcard $(LIBTORCH_GPU_BUNDLE_VENV)/lib/python3*/site-packages/torch)
LIBTORCH_CPU = $(wildcard $(LIBTORCH_CPU_VENV)/lib/python3*/site-packages/torch)
ORT_CPU_VENV := $(CACHE)/venv-ort-$(ORT_VERSION)
GPU_BUNDLE := target/gpu-bundle/ferroserve-gpu-bundle-torch$(GPU_BUNDLE_TORCH).tar.xz

ifneq ($(LIBTORCH_GPU_BUNDLE_VENV),$(LIBTORCH_CPU_VENV))
$(LIBTORCH_GPU_BUNDLE_VENV)/.stamp:
	$(PYTHON) -m venv $(LIBTORCH_GPU_BUNDLE_VENV)
	$(LIBTORCH_GPU_BUNDLE_VENV)/bin/python -m pip install --quiet --no-deps torch==$(GPU_BUNDLE_TORCH) \
		nvidia-cuda-runtime==$(CUDA_RUNTIME_VERSION) nvidia-cuda-cupti==$(CUDA_CUPTI_VERSION)
	touch $@
endif

ifneq ($(ORT_CPU_VENV),$(RUNTIME_VENV))
$(ORT_CPU_VENV)/.stamp:
	$(PYTHON) -m venv $(ORT_CPU_VENV)
	$(ORT_CPU_VENV)/bin/python -m pip install --quiet onnxruntime==$(ORT_VERSION)
	touch $@
endif

## gpu-bundle: $(GPU_BUNDLE) (at most 64 MiB): the stripped release server, ferroserve-gpu-check, the TorchScript
## plugin built against torch $(GPU_BUNDLE_TORCH)'s libtorch, ONNX Runtime's CPU library, signnet and run.sh, which
## runs the CUDA checks, the server with TORCH_DEVICE=cuda and the GPU figures on the host and writes a report
gpu-bundle: $(LIBTORCH_GPU_BUNDLE_VENV)/.stamp $(ORT_CPU_VENV)/.stamp
	LIBTORCH_211="$(LIBTORCH_GPU_BUNDLE)" GPU_BUNDLE_TORCH=$(GPU_BUNDLE_TORCH) \
		ORT_LIB="$(wildcard $(ORT_CPU_VENV)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION))" \
		bash gpu-bundle/build.sh

## gpu-bundle-test: the bundle's size, then the bundle unpacked in a temporary folder and run with TORCH_DEVICE=cpu
## in a clean environment with only the torch $(GPU_BUNDLE_TORCH) wheel's libraries: signnet's reference answers,
## "device":"cpu", nothing loaded from the clone, and a torch $(TORCH_VERSION) refused
gpu-bundle-test: gpu-bundle $(LIBTORCH_CPU_VENV)/.stamp
	bash gpu-bundle/test.sh $(GPU_BUNDLE) "$(LIBTORCH_GPU_BUNDLE)" "$(LIBTORCH_CPU)"

## deploy-check: Kubernetes manifests against their schemas, KServe and KEDA resources against their CRDs,
## yamllint, promtool check and test of the rules (installs its tools into a venv under $(CACHE))
deploy-check: tools
	bash deploy/check.sh

## deploy-live: a real Prometheus scrapes a real ferroserve driven by ferroserve-loadtest (the debug binaries
## that cargo test builds, at a rate they sustain); every recording rule and dashboard query must return data
LIVE_RATE ?= 200
LIVE_SECONDS ?= 15
deploy-live: deps tools
	cargo build --bin ferroserve --bin ferroserve-loadtest
	FERROSERVE_BIN=target/debug/ferroserve FERROSERVE_LOADTEST_BIN=target/debug/ferroserve-loadtest \
		LIVE_RATE=$(LIVE_RATE) LIVE_SECONDS=$(LIVE_SECONDS) bash deploy/live-test.sh

fmt:
	cargo fmt --all --check

lint: deps
	cargo clippy --workspace --all-targets -- -D warnings

## features: the server and engine build with each backend alone and with none (the default has both)
SERVER_FEATURE_SETS := "" "onnx" "torch"
features: deps
	for f in $(SERVER_FEATURE_SETS); do \
		echo "cargo clippy -p ferroserve --no-default-features --features '$$f'"; \
		cargo clippy -p ferroserve --lib --bins --no-default-features --features "$$f" -- -D warnings || exit 1; \
	done

## bench: the in-process backend benchmark and the end-to-end HTTP benchmark
bench: bench-backend bench-e2e

bench-backend: deps
	cargo build --release -p ferroserve-torch-plugin
	cargo bench -p ferroserve-benches --bench backend

## bench-e2e: the wrk table (concurrency 1, 16, 64; batch size 1 and 16), then TLS off and on back to back (3 rounds,
## with CPU per request), then the access log and traces (10 % sampled) off and on in rotation (bench-obs)
bench-e2e: build bench-obs
	bash benches/e2e.sh
	TLS=ab bash benches/e2e.sh

## bench-adaptive: maxBatchDelay "auto" (p99 objective) against fixed settings: a lone client, open loop at 10-95 %
## of capacity, and a 10 % -> 90 % -> 10 % step (release server and ferroserve-loadtest)
bench-adaptive: build
	cargo build --release --bin ferroserve-loadtest
	bash benches/adaptive.sh

## bench-drift: the cost of drift detection, on and off in alternation (throughput and CPU per request)
bench-drift: build
	bash benches/drift-cost.sh

## bench-obs: the cost of the access log and OTLP traces (10 % sampled, to a local receiver): off, log, traces and
## both in rotation (req/s, p50, p99 and CPU per request; benches/obs-cost.sh, SINK=refused for a collector that is down)
bench-obs: build
	cargo build --release --bin ferroserve-loadtest
	cargo build --release -p ferroserve --example otlp_sink
	bash benches/obs-cost.sh

LT := target/release/ferroserve-loadtest

## loadtest: 10 s of closed-loop load (64 connections) against the server `make run` started, with its side of the
## story (metrics) and both CPU times
loadtest:
	cargo build --release --bin ferroserve-loadtest
	$(LT) --model signnet --concurrency 64 --duration 10s --warmup 2s \
		--metrics-url http://127.0.0.1:8082/metrics --server-pid $$(pgrep -x ferroserve)

## tune: the batch-size search against the server `make run` started (about 10 minutes)
tune:
	cargo build --release --bin ferroserve-loadtest
	$(LT) tune --model signnet --slo p99=25ms --batch-sizes 1,2,4,8,16,32 --delays 1ms,5ms \
		--key-file key_file.json --server-pid $$(pgrep -x ferroserve) --plot loadtest/docs/tune-signnet.svg

## bench-memory: the release server's resident memory at idle, under load and after it, serving only ONNX and with
## a TorchScript model (benches/memory.sh; DURATION, CONCURRENCY, WORKERS)
bench-memory: build
	cargo build --release --bin ferroserve-loadtest
	bash benches/memory.sh

## soak: 10 minutes at 3x the sustainable rate, open loop: nothing lost, memory flat (not part of make test)
soak: build
	cargo build --release --bin ferroserve-loadtest
	bash benches/soak.sh

## model: remake models/signnet from its script (installs torch, onnx and onnxruntime in a tools venv)
$(MODEL_VENV)/.stamp:
	$(PYTHON) -m venv $(MODEL_VENV)
	$(MODEL_VENV)/bin/python -m pip install --quiet torch==$(TORCH_VERSION) onnx==$(ONNX_VERSION) \
		onnxscript==$(ONNXSCRIPT_VERSION) onnxruntime==$(ORT_VERSION) numpy
	touch $@

model: $(MODEL_VENV)/.stamp
	$(MODEL_VENV)/bin/python models/signnet/make_signnet.py

$(SCIPY_VENV)/.stamp:
	$(PYTHON) -m venv $(SCIPY_VENV)
	$(SCIPY_VENV)/bin/python -m pip install --quiet scipy==$(SCIPY_VERSION) numpy==$(NUMPY_VERSION)
	touch $@

## drift-fixtures: the drift statistics' expected values (server/tests/fixtures/drift/expected.json), computed
## with scipy==$(SCIPY_VERSION) in a venv under $(CACHE); the tests read the committed file and need no Python
drift-fixtures: $(SCIPY_VENV)/.stamp
	$(SCIPY_VENV)/bin/python server/tests/fixtures/drift/make_expected.py

## fuzz: each cargo-fuzz target for FUZZ_SECONDS (default 600) on the nightly toolchain; crashes land in
## fuzz/artifacts/TARGET (commit them as regression tests)
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := config_properties landmarks kserve_request kserve_grpc_request
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		(cd fuzz && cargo +nightly fuzz run $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=100000) || exit 1; \
	done

clean:
	cargo clean
	rm -rf third_party
