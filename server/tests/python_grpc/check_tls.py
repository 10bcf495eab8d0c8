"""Triton's clients, unchanged, against a ferroserve that serves TLS: tritonclient.http with ssl=True on the
https:// inference address and tritonclient.grpc with ssl=True on the gRPC port (enable_grpc_ssl=true), both
trusting the test certificate (server/tests/fixtures/tls/rsa.crt, for localhost and 127.0.0.1, signed by the test CA ca.crt), and a
client that does not trust it refused.

Usage: check_tls.py HTTPS_HOST_PORT GRPC_HOST_PORT CA_CERT
"""

import sys

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

HTTPS, GRPC, CA = sys.argv[1:4]


def check(condition, what):
    if not condition:
        sys.exit(f"FAIL: {what}")
    print(f"ok: {what}")


def infer(client, module):
    metadata = client.get_model_metadata("signnet")
    name = metadata["inputs"][0]["name"] if isinstance(metadata, dict) else metadata.inputs[0].name
    x = np.random.default_rng(0).random((2, 30, 21, 3), dtype=np.float32)
    tensor = module.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out = client.infer("signnet", [tensor])
    output = metadata["outputs"][0]["name"] if isinstance(metadata, dict) else metadata.outputs[0].name
    return out.as_numpy(output)


def main():
    http = triton_http.InferenceServerClient(HTTPS, ssl=True, ssl_options={"ca_certs": CA})
    check(http.is_server_live() and http.is_model_ready("signnet"), "tritonclient.http over TLS: live, model ready")
    over_http = infer(http, triton_http)
    check(over_http.shape == (2, 10), f"tritonclient.http over TLS: infer {over_http.shape}")

    grpc = triton_grpc.InferenceServerClient(GRPC, ssl=True, root_certificates=CA)
    check(grpc.is_server_live() and grpc.is_model_ready("signnet"), "tritonclient.grpc over TLS: live, model ready")
    over_grpc = infer(grpc, triton_grpc)
    check(np.allclose(over_grpc, over_http, atol=1e-5), "tritonclient.grpc over TLS: same outputs as over HTTPS")

    untrusting = triton_http.InferenceServerClient(HTTPS, ssl=True)
    try:
        untrusting.is_server_live()
    except Exception as e:  # the client's own error type for a failed certificate check
        check("CERTIFICATE" in str(e).upper() or "SSL" in str(e).upper(), f"a client without the CA is refused: {e}")
    else:
        sys.exit("FAIL: a client that does not trust the certificate was answered")


if __name__ == "__main__":
    main()
    print("all TLS client checks passed")
