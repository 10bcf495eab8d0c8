#!/usr/bin/env bash
# Starts the debug ferroserve (FERROSERVE_BIN) with signnet on free loopback ports, token authorisation and the
# model API on, and runs check_grpc.py with PYTHON (the venv that `make grpc-test` installs) against its gRPC
# listeners; then a second one serving TLS, for check_tls.py, and a third with max_connections=1, for
# check_refusal.py.
# Exit status: the script's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../deploy/lib.sh"
PYTHON="${PYTHON:?set PYTHON to the venv with tritonclient[grpc] and grpcio-tools}"
grpc_inference=$(free_port) grpc_management=$(free_port)
start_ferroserve "grpc_inference_port=$grpc_inference" "grpc_management_port=$grpc_management" \
    "enable_model_api=true" "default_workers_per_model=1"
"$PYTHON" "$ROOT/server/tests/python_grpc/check_grpc.py" "127.0.0.1:$grpc_inference" "127.0.0.1:$grpc_management" \
    "$INFERENCE_URL" "$KEY_FILE" "$ROOT/server/proto" "$ROOT/models/signnet/example.json"

# The same clients over TLS: a second server with an https:// inference address and enable_grpc_ssl=true, the
# test certificate of server/tests/fixtures/tls (for localhost and 127.0.0.1, signed by the test CA ca.crt).
tls_dir="$ROOT/server/tests/fixtures/tls"
https_port=$(free_port) grpcs_port=$(free_port)
{
    echo "inference_address=https://127.0.0.1:$https_port"
    echo "management_address=http://127.0.0.1:$(free_port)"
    echo "metrics_address=http://127.0.0.1:$(free_port)"
    echo "grpc_inference_port=$grpcs_port"
    echo "grpc_management_port=0"
    echo "enable_grpc_ssl=true"
    echo "private_key_file=$tls_dir/rsa-pkcs1.key"
    echo "certificate_file=$tls_dir/rsa.crt"
    echo "model_store=$ROOT/models"
    echo "load_models=signnet"
    echo "default_workers_per_model=1"
    echo "key_file=$WORK/tls_key_file.json"
} >"$WORK/tls.properties"
"$FERROSERVE_BIN" --ts-config "$WORK/tls.properties" >"$WORK/tls.log" 2>&1 &
PIDS+=("$!")
deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null --max-time 2 --cacert "$tls_dir/ca.crt" "https://127.0.0.1:$https_port/ping" 2>/dev/null; do
    ((SECONDS < deadline)) || { tail -20 "$WORK/tls.log" >&2; fail "ferroserve over TLS did not become healthy"; }
    sleep 0.2
done
"$PYTHON" "$ROOT/server/tests/python_grpc/check_tls.py" "127.0.0.1:$https_port" "127.0.0.1:$grpcs_port" "$tls_dir/ca.crt"

# A third server with max_connections=1, for check_refusal.py: a gRPC connection past the limit is refused in
# gRPC's terms.
limit_grpc=$(free_port)
FERROSERVE_NAME=limit start_ferroserve "grpc_inference_port=$limit_grpc" "max_connections=1" \
    "default_workers_per_model=1"
"$PYTHON" "$ROOT/server/tests/python_grpc/check_refusal.py" "127.0.0.1:$limit_grpc"
