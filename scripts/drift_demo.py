#!/usr/bin/env python3
"""Shows drift detection on a running ferroserve: sends `--reference` requests made from models/signnet/example.json
with the hand placed and sized at random (as the training data varies them), then `--shifted` requests whose hands
sit `--x-shift` further right (another camera framing), and prints the drift series of the metrics API and the
last window's verdict from the describe API. Standard library only.

    python3 scripts/drift_demo.py --inference 127.0.0.1:8080 --management 127.0.0.1:8081 --metrics 127.0.0.1:8082

The server must take its reference from the first requests (no signnet.drift.json in the model store) with
drift_reference_size and drift_window_size at most the counts sent here (defaults 1000 each).
"""

import argparse
import json
import os
import random
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def request(url, body=None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        return reply.read()


def body(frames, rng, x_shift):
    """The example's hand moved to a random place and scaled at random, then moved `x_shift` to the right."""
    wrist_x = sum(f[0][0] for f in frames) / len(frames)
    wrist_y = sum(f[0][1] for f in frames) / len(frames)
    cx, cy, scale = rng.uniform(0.3, 0.7) + x_shift, rng.uniform(0.35, 0.75), rng.uniform(0.6, 1.4)
    moved = [[[cx + scale * (p[0] - wrist_x), cy + scale * (p[1] - wrist_y), scale * p[2]] for p in f] for f in frames]
    return json.dumps({"landmarks": moved}).encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inference", default="127.0.0.1:8080")
    parser.add_argument("--management", default="127.0.0.1:8081")
    parser.add_argument("--metrics", default="127.0.0.1:8082")
    parser.add_argument("--reference", type=int, default=1000)
    parser.add_argument("--shifted", type=int, default=1000)
    parser.add_argument("--x-shift", type=float, default=0.06, help="image units (the placement's sd is 0.115)")
    args = parser.parse_args()
    with open(os.path.join(HERE, "../models/signnet/example.json")) as f:
        frames = json.load(f)["landmarks"]
    rng = random.Random(1)
    url = f"http://{args.inference}/predictions/signnet"
    for i in range(args.reference + args.shifted):
        request(url, body(frames, rng, args.x_shift if i >= args.reference else 0.0))
    metrics = request(f"http://{args.metrics}/metrics").decode()
    print("\n".join(line for line in metrics.splitlines() if line.startswith("ferroserve_drift")))
    described = json.loads(request(f"http://{args.management}/models/signnet"))
    print(json.dumps(described[0].get("drift"), indent=1))


if __name__ == "__main__":
    main()
