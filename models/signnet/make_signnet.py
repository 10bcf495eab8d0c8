#!/usr/bin/env python3
"""Makes the bundled sign model `signnet`: synthetic hand-landmark data, training, export.

Everything is seeded, so the same torch/onnx versions give the same files. It writes, beside itself:
  signnet.onnx          input `landmarks` float32 [batch, 30, 21, 3] -> `probabilities` float32 [batch, 10]
  signnet.pt            the same model as TorchScript (torch.jit.trace), for the tch backend
  signnet.pt.json       its config: input name and per-sample shape, output name and shape (TorchScript has none)
  index_to_name.json    TorchServe's label map {"0": "hello", ...}
  example.json          one request body (a synthetic "hello")
  reference.json        a few inputs with the probabilities onnxruntime gives for them (used by the tests); the
                        TorchScript module must give the same within 1e-5 (checked here and in the tests)
and, in engine/tests/fixtures, two small files the TorchScript backend must refuse with an export hint: a
`torch.save(module)` archive and a state_dict pickled in the legacy format; and a tiny TorchScript file that
declares its tensors in its own `_extra_files` (`ferroserve.json`).

Run it through `make model` (it installs torch, onnx and onnxruntime into the tools venv first).

The landmarks follow MediaPipe Hands: 21 points (0 wrist, 1-4 thumb, 5-8 index, 9-12 middle, 13-16 ring,
17-20 pinky), x and y in image units (0..1), z relative depth. Each class is a hand shape plus a motion; the
generator adds random placement, size, rotation, speed, phase and jitter, so the model has to learn the sign and
not the numbers.
"""

import json
import math
import os

import numpy as np
import torch
from torch import nn

FRAMES = 30
POINTS = 21
HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20261129

# label -> (per-finger extension 0=curled..1=straight for thumb,index,middle,ring,pinky; motion)
SIGNS = [
    ("hello", (1, 1, 1, 1, 1), "wave"),
    ("thanks", (1, 1, 1, 1, 1), "forward"),
    ("yes", (0, 0, 0, 0, 0), "nod"),
    ("no", (0.3, 1, 1, 0, 0), "shake"),
    ("please", (1, 1, 1, 1, 1), "circle"),
    ("sorry", (0, 0, 0, 0, 0), "circle"),
    ("help", (1, 0, 0, 0, 0), "up"),
    ("love", (1, 1, 0, 0, 1), "still"),
    ("eat", (0.5, 0.5, 0.5, 0.5, 0.5), "tap"),
    ("drink", (0.6, 0.6, 0.6, 0.6, 0.6), "tilt"),
]
LABELS = [s[0] for s in SIGNS]

# Finger bases (MCP joints) relative to the wrist, hand pointing up (-y in image coordinates), unit = hand length.
BASES = np.array([[-0.35, -0.25], [-0.2, -0.9], [0.0, -0.95], [0.18, -0.9], [0.33, -0.8]])
LENGTHS = np.array([0.55, 0.45, 0.5, 0.47, 0.38])


def hand_pose(ext):
    """21 points of a still hand whose fingers are extended by `ext` (5 values in 0..1)."""
    pts = np.zeros((POINTS, 3))
    for f in range(5):
        base = np.array([BASES[f, 0], BASES[f, 1], 0.0])
        direction = base[:2] / np.linalg.norm(base[:2])
        curl = (1.0 - ext[f]) * 1.3  # radians of bend per joint
        pos = base.copy()
        angle = 0.0
        seg = LENGTHS[f] / 3
        pts[1 + 4 * f] = pos
        for j in range(1, 4):
            angle += curl
            # bend towards the palm: the finger turns into +z and back down towards the wrist
            step = np.array([direction[0] * math.cos(angle), direction[1] * math.cos(angle), -math.sin(angle)])
            pos = pos + seg * step
            pts[1 + 4 * f + j] = pos
    return pts


def motion(kind, t, rng):
    """Wrist offset (3,) and in-plane rotation (radians) at time t in 0..1."""
    w = 2 * math.pi * t
    if kind == "wave":
        return np.zeros(3), 0.45 * math.sin(2 * w)
    if kind == "forward":
        return np.array([0.0, 0.6 * t, -0.5 * t]), 0.0
    if kind == "nod":
        return np.array([0.0, 0.25 * math.sin(2 * w), 0.0]), 0.0
    if kind == "shake":
        return np.array([0.3 * math.sin(2 * w), 0.0, 0.0]), 0.0
    if kind == "circle":
        return np.array([0.35 * math.cos(w), 0.35 * math.sin(w), 0.0]), 0.0
    if kind == "up":
        return np.array([0.0, -0.8 * t, 0.0]), 0.0
    if kind == "still":
        return np.zeros(3), 0.0
    if kind == "tap":
        return np.array([0.0, 0.0, 0.25 * abs(math.sin(2 * w))]), 0.0
    if kind == "tilt":
        return np.array([0.0, -0.2 * t, 0.0]), -0.9 * t
    raise ValueError(kind)


def sample(label_index, rng):
    """One synthetic sequence [FRAMES, POINTS, 3] of sign `label_index`."""
    _, ext, kind = SIGNS[label_index]
    ext = np.clip(np.array(ext) + rng.normal(0, 0.08, 5), 0, 1)
    pose = hand_pose(ext)
    size = rng.uniform(0.1, 0.25)
    centre = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.75), 0.0])
    base_rot = rng.normal(0, 0.25)
    speed = rng.uniform(0.8, 1.2)
    phase = rng.uniform(0, 0.15)
    seq = np.zeros((FRAMES, POINTS, 3))
    for i in range(FRAMES):
        t = min(1.0, phase + speed * i / (FRAMES - 1))
        offset, rot = motion(kind, t, rng)
        a = base_rot + rot
        c, s = math.cos(a), math.sin(a)
        r = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        seq[i] = centre + size * ((pose @ r.T) + offset)
    seq += rng.normal(0, 0.004, seq.shape)
    return seq.astype(np.float32)


def dataset(per_class, rng):
    xs, ys = [], []
    for y in range(len(SIGNS)):
        for _ in range(per_class):
            xs.append(sample(y, rng))
            ys.append(y)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


class SignNet(nn.Module):
    """Per-frame MLP over normalised landmarks, two temporal convolutions, mean pooling, softmax.

    About 3.7 M multiply-adds (7.4 MFLOP) per sample.
    """

    def __init__(self, classes=len(SIGNS), width=128):
        super().__init__()
        self.frame = nn.Sequential(nn.Linear(POINTS * 3, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.temporal = nn.Sequential(
            nn.Conv1d(width, width, 3, padding=1), nn.ReLU(), nn.Conv1d(width, width, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(width, classes)

    def forward(self, landmarks):
        # Normalise placement and size inside the model, so that clients send raw landmarks.
        wrist = landmarks[:, :, 0:1, :]
        centre = wrist.mean(dim=1, keepdim=True)
        scale = (landmarks[:, :, 9, :] - landmarks[:, :, 0, :]).norm(dim=-1).mean(dim=1)
        x = (landmarks - centre) / (scale.view(-1, 1, 1, 1) + 1e-6)
        x = self.frame(x.flatten(2))  # [B, T, W]
        x = self.temporal(x.transpose(1, 2))  # [B, W, T]
        return torch.softmax(self.head(x.mean(dim=2)), dim=-1)


def train(model, x, y, epochs=12):
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.NLLLoss()
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = loss_fn(torch.log(model(x[idx]) + 1e-9), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(x):.4f}")


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def export_onnx(model, path):
    example = torch.zeros(2, FRAMES, POINTS, 3)
    torch.onnx.export(
        model,
        (example,),
        path,
        input_names=["landmarks"],
        output_names=["probabilities"],
        dynamic_shapes={"landmarks": {0: torch.export.Dim("batch", min=1, max=4096)}},
        opset_version=18,
        external_data=False,
        dynamo=True,
    )


def export_torchscript(model, path):
    """Traces the model on a batch of 2 (nothing in its forward depends on the values or the batch size, so the
    traced graph serves any batch) and writes it with its config."""
    example = torch.zeros(2, FRAMES, POINTS, 3)
    with torch.no_grad():
        traced = torch.jit.trace(model, (example,))
    torch.jit.save(traced, path)
    config = {
        "input": {"name": "landmarks", "shape": [FRAMES, POINTS, 3]},
        "output": {"name": "probabilities", "shape": [len(SIGNS)]},
    }
    write_json(os.path.basename(path) + ".json", config)


def write_not_torchscript(folder):
    """Files that are not TorchScript: torch.save of a whole module (a zip archive of pickles) and a state_dict in
    the legacy pickle format. A few KB each."""
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(SEED)
    tiny = nn.Linear(3, 2)
    torch.save(tiny, os.path.join(folder, "torch_save_module.pt"))
    torch.save(tiny.state_dict(), os.path.join(folder, "state_dict_legacy.pth"), _use_new_zipfile_serialization=False)


class SumTwice(nn.Module):
    """Sums the last dimension and doubles it: [batch, k, 3] -> [batch, k] for any k."""

    def forward(self, x):
        return x.sum(dim=-1) * 2


def write_declared_fixture(folder):
    """A TorchScript file whose tensors are declared inside it, as `torch.jit.save(..., _extra_files=...)` writes
    them: input `points` of per-sample shape [-1, 3] (any number of points), output `sums`. A few KB."""
    os.makedirs(folder, exist_ok=True)
    traced = torch.jit.trace(SumTwice(), (torch.zeros(1, 2, 3),))
    declared = {"input": {"name": "points", "shape": [-1, 3]}, "output": {"name": "sums"}}
    path = os.path.join(folder, "declared_in_extra_files.pt")
    torch.jit.save(traced, path, _extra_files={"ferroserve.json": json.dumps(declared)})


def write_json(name, obj):
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rng = np.random.default_rng(SEED)
    x, y = dataset(400, rng)
    xt, yt = dataset(60, rng)
    model = SignNet()
    train(model, x, y)
    model.eval()
    print(f"held-out accuracy: {accuracy(model, xt, yt):.3f}")

    onnx_path = os.path.join(HERE, "signnet.onnx")
    export_onnx(model, onnx_path)
    ts_path = os.path.join(HERE, "signnet.pt")
    export_torchscript(model, ts_path)
    write_not_torchscript(os.path.join(HERE, "..", "..", "engine", "tests", "fixtures"))
    write_declared_fixture(os.path.join(HERE, "..", "..", "engine", "tests", "fixtures"))
    write_json("index_to_name.json", {str(i): name for i, name in enumerate(LABELS)})

    example_rng = np.random.default_rng(SEED + 1)
    example = np.round(sample(0, example_rng), 4)
    write_json("example.json", {"landmarks": example.tolist()})

    # Reference outputs come from onnxruntime on the exact (rounded) inputs that are stored.
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ref_rng = np.random.default_rng(SEED + 2)
    inputs = np.stack([np.round(sample(i % len(SIGNS), ref_rng), 5) for i in range(8)]).astype(np.float32)
    probs = sess.run(None, {"landmarks": inputs})[0]
    torch_probs = model(torch.from_numpy(inputs)).detach().numpy()
    print(f"max |onnx - torch| = {np.abs(probs - torch_probs).max():.2e}")
    traced = torch.jit.load(ts_path)
    with torch.no_grad():
        ts_probs = np.concatenate([traced(torch.from_numpy(inputs[i : i + n])).numpy() for i, n in ((0, 1), (1, 7))])
    parity = np.abs(probs - ts_probs).max()
    print(f"max |onnx - torchscript| = {parity:.2e} (batches of 1 and 7)")
    assert parity < 1e-5, "the TorchScript module and the ONNX model disagree"
    write_json(
        "reference.json",
        {
            "labels": [LABELS[i % len(SIGNS)] for i in range(8)],
            "landmarks": inputs.tolist(),
            "probabilities": probs.tolist(),
        },
    )
    print("predicted:", [LABELS[i] for i in probs.argmax(axis=1)])


if __name__ == "__main__":
    main()
