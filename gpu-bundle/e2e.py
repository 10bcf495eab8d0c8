"""The GPU bundle's end-to-end check (run by run.sh; Python's standard library only, as the host has nothing else
to spare): waits for the server, posts signnet's eight reference samples to each model named on the command line,
and checks each answer (label, confidence within the tolerance, "device" and x-device as expected) and the
metrics' device label. Appends a markdown table to the report; exit status 1 when a check fails.

usage: e2e.py BASE_URL METRICS_URL MODELS_DIR REPORT MODEL=DEVICE_KIND [MODEL=DEVICE_KIND ...]
"""

import json
import sys
import time
import urllib.error
import urllib.request

TOLERANCE = 2e-3  # TF32 on CUDA, as the CUDA tests allow


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.status, reply.read().decode()


def post(url, body):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def wait_ready(base, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if get(base + "/ping", timeout=1)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def check_model(base, model, kind, reference):
    """Returns (ok, detail) for one model's eight answers."""
    worst, devices = 0.0, set()
    for i, (landmarks, label, probabilities) in enumerate(
        zip(reference["landmarks"], reference["labels"], reference["probabilities"])
    ):
        status, headers, body = post(f"{base}/predictions/{model}", json.dumps({"landmarks": landmarks}).encode())
        if status != 200:
            return False, f"sample {i}: HTTP {status}: {body[:300]}"
        answer = json.loads(body)
        prediction = answer["predictions"][0]
        if answer.get("device") != kind:
            return False, f'sample {i}: "device": {answer.get("device")!r}, expected {kind!r}'
        device = {k.lower(): v for k, v in headers.items()}.get("x-device", "")
        if not (device == kind or device.startswith(kind + ":")):
            return False, f"sample {i}: x-device {device!r}, expected {kind}"
        devices.add(device)
        if prediction["label"] != label:
            return False, f"sample {i}: label {prediction['label']!r}, expected {label!r}"
        difference = abs(prediction["confidence"] - max(probabilities))
        if not difference <= TOLERANCE:
            return False, f"sample {i}: confidence {prediction['confidence']} against {max(probabilities)}"
        worst = max(worst, difference)
    return True, f'8 reference samples: labels right, confidence within {worst:.1e}, "device":"{kind}", x-device {sorted(devices)}'


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    base, metrics, models_dir, report_path = sys.argv[1:5]
    expected = dict(arg.split("=", 1) for arg in sys.argv[5:])
    with open(f"{models_dir}/signnet/reference.json") as f:
        reference = json.load(f)
    rows, failed = [], False

    def row(name, ok, detail):
        nonlocal failed
        failed |= not ok
        rows.append(f"| {name} | {'PASS' if ok else 'FAIL'} | {detail} |")

    ready = wait_ready(base, 120)
    row("server ready", ready, base if ready else "no answer to /ping within 120 s (see server.log)")
    if ready:
        for model, kind in expected.items():
            row(f"{model} answers the reference", *check_model(base, model, kind, reference))
        try:
            text = get(metrics + "/metrics")[1]
            for model, kind in expected.items():
                labelled = [l for l in text.splitlines() if f'model_name="{model}"' in l and f'device="{kind}"' in l]
                row(f"{model} metrics carry device=\"{kind}\"", bool(labelled), f"{len(labelled)} series")
        except OSError as error:
            row("metrics", False, str(error))
    table = "\n## The server end to end (e2e.py)\n\n| check | result | detail |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    print(table, end="")
    with open(report_path, "a") as f:
        f.write(table)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
