"""Real gRPC clients against a running ferroserve, as their users run them.

tritonclient.grpc, unchanged, against KServe v2's inference.GRPCInferenceService: metadata, readiness, infer
with raw tensors (what the client sends) and typed contents (through the client's own generated stub), several
models, errors as gRPC codes; every output equal to the HTTP/JSON path's; Triton's model configuration and
statistics as the client decodes them. Then a client generated with
grpcio-tools from the TorchServe protos in server/proto: ping, predictions, list, describe, register, scale,
set-default, unregister, with the management key in `authorization` metadata, as TorchServe's clients send it.

Usage: check_grpc.py GRPC_INFERENCE GRPC_MANAGEMENT HTTP_INFERENCE_URL KEY_FILE PROTO_DIR EXAMPLE_JSON
"""

import importlib
import importlib.resources
import json
import sys
import tempfile
import urllib.request

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_tools import protoc
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

GRPC, GRPC_MANAGEMENT, HTTP, KEY_FILE, PROTO_DIR, EXAMPLE = sys.argv[1:7]


def check(condition, what):
    if not condition:
        sys.exit(f"FAIL: {what}")
    print(f"ok: {what}")


def http_post(path, body):
    request = urllib.request.Request(HTTP + path, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def expect_code(call, code, what):
    try:
        call()
    except InferenceServerException as e:
        check(e.status() == str(code), f"{what}: {e.status()} {e.message()}")
        return
    except grpc.RpcError as e:
        check(e.code() == code, f"{what}: {e.code()} {e.details()}")
        return
    sys.exit(f"FAIL: {what}: no error")


def landmarks(samples):
    frames = np.asarray(json.load(open(EXAMPLE))["landmarks"], dtype=np.float32)
    return np.stack([frames * (1.0 + 0.01 * k) for k in range(samples)])


def kserve():
    client = triton.InferenceServerClient(GRPC)
    check(client.is_server_live() and client.is_server_ready(), "server live and ready")
    check(client.get_server_metadata().name == "ferroserve", "server metadata")
    check(client.is_model_ready("signnet"), "model ready")
    check(not client.is_model_ready("nope"), "an unknown model is not ready")
    metadata = client.get_model_metadata("signnet")
    check(list(metadata.inputs[0].shape) == [-1, 30, 21, 3], f"model metadata {metadata.inputs[0].shape}")
    output_name = metadata.outputs[0].name

    x = landmarks(2)
    tensor = triton.InferInput(metadata.inputs[0].name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("signnet", [tensor], request_id="r-1")
    raw = result.as_numpy(output_name)
    check(raw.shape == (2, 10) and result.get_response().id == "r-1", f"raw infer {raw.shape}")
    body = {"inputs": [{"name": metadata.inputs[0].name, "datatype": "FP32", "shape": list(x.shape),
                        "data": x.flatten().tolist()}]}
    http = np.asarray(http_post("/v2/models/signnet/infer", json.dumps(body).encode())["outputs"][0]["data"])
    check(np.allclose(raw.flatten(), http, atol=1e-5), "raw infer equals the HTTP/JSON answer")

    # Typed contents, through tritonclient's own stub (its InferInput always sends raw bytes).
    request = service_pb2.ModelInferRequest(model_name="signnet")
    typed = request.inputs.add(name=metadata.inputs[0].name, datatype="FP32", shape=list(x.shape))
    typed.contents.fp32_contents.extend(x.flatten().tolist())
    answer = client._client_stub.ModelInfer(request)
    values = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
    check(np.allclose(values, raw.flatten(), atol=1e-5), "typed infer equals the raw one")

    wrong = triton.InferInput(metadata.inputs[0].name, [1, 30, 21, 2], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 30, 21, 2), dtype=np.float32))
    expect_code(lambda: client.infer("signnet", [wrong]), grpc.StatusCode.INVALID_ARGUMENT, "wrong shape")
    expect_code(lambda: client.infer("nope", [tensor]), grpc.StatusCode.NOT_FOUND, "unknown model")
    expect_code(lambda: client.get_model_metadata("nope"), grpc.StatusCode.NOT_FOUND, "unknown model metadata")
    config_and_statistics(client, metadata)
    return client, tensor, output_name, raw


def config_and_statistics(client, metadata):
    config = client.get_model_config("signnet").config
    check(config.name == "signnet" and config.platform == metadata.platform, f"model config {config.name}")
    check(config.max_batch_size >= 1 and list(config.input[0].dims) == [30, 21, 3],
          f"config batch and dims {config.max_batch_size} {list(config.input[0].dims)}")
    check(config.input[0].data_type == 11 and config.output[0].name == metadata.outputs[0].name,
          "config input type TYPE_FP32 and output name")
    expect_code(lambda: client.get_model_config("nope"), grpc.StatusCode.NOT_FOUND, "config of an unknown model")

    # So far: the raw infer (2 samples), the same over HTTP (2), the typed one (2), all answered; the wrong
    # shape failed (the unknown model reached no model).
    stats = client.get_inference_statistics("signnet").model_stats
    check(len(stats) == 1 and stats[0].name == "signnet" and stats[0].version == "1.0", "statistics of signnet")
    signnet = stats[0]
    check(signnet.inference_count == 6 and 1 <= signnet.execution_count <= 6,
          f"statistics count samples and batches {signnet.inference_count} {signnet.execution_count}")
    success, fail = signnet.inference_stats.success, signnet.inference_stats.fail
    check(success.count == 3 and success.ns > 0 and fail.count == 1, f"success {success.count} fail {fail.count}")
    check(signnet.inference_stats.queue.count == 6 and signnet.last_inference > 0, "queue statistics per sample")
    everything = client.get_inference_statistics().model_stats
    check([m.name for m in everything] == ["signnet"], "statistics of every model")
    expect_code(lambda: client.get_inference_statistics("nope"), grpc.StatusCode.NOT_FOUND,
                "statistics of an unknown model")


def torchserve_stubs():
    out = tempfile.mkdtemp()
    for proto in ["google/rpc/status.proto", "torchserve/inference.proto", "torchserve/management.proto"]:
        code = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{importlib.resources.files('grpc_tools') / '_proto'}",
                            f"--python_out={out}", f"--grpc_python_out={out}", proto])
        check(code == 0, f"grpcio-tools generates {proto}")
    sys.path.insert(0, out)
    return (importlib.import_module("torchserve.inference_pb2"), importlib.import_module("torchserve.inference_pb2_grpc"),
            importlib.import_module("torchserve.management_pb2"), importlib.import_module("torchserve.management_pb2_grpc"))


def torchserve(kserve_client, tensor, output_name, raw):
    inference, inference_grpc, management, management_grpc = torchserve_stubs()
    infer = inference_grpc.InferenceAPIsServiceStub(grpc.insecure_channel(GRPC))
    health = json.loads(infer.Ping(inference_pb2_empty()).health)
    check(health == {"status": "Healthy"}, f"ping {health}")
    example = open(EXAMPLE, "rb").read()
    prediction = json.loads(infer.Predictions(inference.PredictionsRequest(model_name="signnet",
                                                                           input={"data": example})).prediction)
    http = http_post("/predictions/signnet", example)
    check([p["label"] for p in prediction["predictions"]] == [p["label"] for p in http["predictions"]],
          f"predictions equal the HTTP answer: {prediction}")
    expect_code(lambda: infer.Predictions(inference.PredictionsRequest(model_name="nope", input={"data": example})),
                grpc.StatusCode.NOT_FOUND, "predictions of an unknown model")

    key = json.load(open(KEY_FILE))["management"]["key"]
    auth = [("authorization", f"Bearer {key}")]
    manage = management_grpc.ManagementAPIsServiceStub(grpc.insecure_channel(GRPC_MANAGEMENT))
    expect_code(lambda: manage.ListModels(management.ListModelsRequest()), grpc.StatusCode.UNAUTHENTICATED,
                "list without the management key")
    names = [m["modelName"] for m in json.loads(manage.ListModels(management.ListModelsRequest(), metadata=auth).msg)["models"]]
    check(names == ["signnet"], f"list {names}")
    described = json.loads(manage.DescribeModel(management.DescribeModelRequest(model_name="signnet"), metadata=auth).msg)
    check(described[0]["modelName"] == "signnet" and described[0]["modelVersion"] == "1.0", "describe")
    registered = json.loads(manage.RegisterModel(management.RegisterModelRequest(
        url="signnet", model_name="signnet2", initial_workers=1, synchronous=True), metadata=auth).msg)
    check("registered" in registered["status"], f"register {registered}")
    expect_code(lambda: manage.RegisterModel(management.RegisterModelRequest(url="signnet", model_name="signnet2"),
                                             metadata=auth), grpc.StatusCode.ALREADY_EXISTS, "register twice")
    scaled = json.loads(manage.ScaleWorker(management.ScaleWorkerRequest(
        model_name="signnet2", min_worker=2, synchronous=True), metadata=auth).msg)
    check(scaled["status"] == "Workers scaled to 2 for model: signnet2", f"scale {scaled}")
    default = json.loads(manage.SetDefault(management.SetDefaultRequest(model_name="signnet2", model_version="1.0"),
                                           metadata=auth).msg)
    check("Default version successfully updated" in default["status"], f"set-default {default}")
    expect_code(lambda: manage.SetDefault(management.SetDefaultRequest(model_name="signnet2", model_version="9"),
                                          metadata=auth), grpc.StatusCode.NOT_FOUND, "set-default of a missing version")

    # Several models: the new one answers tritonclient as the first does.
    other = kserve_client.infer("signnet2", [tensor]).as_numpy(output_name)
    check(np.allclose(other, raw, atol=1e-5), "signnet2 answers as signnet")

    gone = json.loads(manage.UnregisterModel(management.UnregisterModelRequest(model_name="signnet2"),
                                             metadata=auth).msg)
    check("unregistered" in gone["status"], f"unregister {gone}")
    expect_code(lambda: manage.DescribeModel(management.DescribeModelRequest(model_name="signnet2"), metadata=auth),
                grpc.StatusCode.NOT_FOUND, "describe after unregister")


def inference_pb2_empty():
    from google.protobuf import empty_pb2
    return empty_pb2.Empty()


if __name__ == "__main__":
    torchserve(*kserve())
    print("all gRPC client checks passed")
