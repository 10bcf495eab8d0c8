#!/usr/bin/env bash
# Starts the debug ferroserve (FERROSERVE_BIN) with signnet on free loopback ports, token authorisation and the
# model API on, and runs check_grpc.py with PYTHON (the venv that `make grpc-test` installs) against its gRPC
# listeners. Exit status: the script's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../deploy/lib.sh"
PYTHON="${PYTHON:?set PYTHON to the venv with tritonclient[grpc] and grpcio-tools}"
grpc_inference=$(free_port) grpc_management=$(free_port)
start_ferroserve "grpc_inference_port=$grpc_inference" "grpc_management_port=$grpc_management" \
    "enable_model_api=true" "default_workers_per_model=1"
"$PYTHON" "$ROOT/server/tests/python_grpc/check_grpc.py" "127.0.0.1:$grpc_inference" "127.0.0.1:$grpc_management" \
    "$INFERENCE_URL" "$WORK/key_file.json" "$ROOT/server/proto" "$ROOT/models/signnet/example.json"
