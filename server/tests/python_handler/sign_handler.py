"""A custom TorchServe handler with pre- and post-processing, and test hooks in its requests: `raise` makes the
handler raise (the whole batch fails, as in TorchServe), `status` answers that request alone with that status,
`sleep` hangs the worker, `die` kills it mid-batch."""
import json
import os
import time

import torch

from feature_engineering import features
from model import SignNet


class SignHandler:
    def __init__(self):
        self.model = None
        self.labels = None

    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        self.model = SignNet()
        state = torch.load(os.path.join(model_dir, "model.pt"), weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()
        with open(os.path.join(model_dir, "index_to_name.json")) as f:
            self.labels = json.load(f)
        print(f"sign handler ready on gpu {context.system_properties.get('gpu_id')}", flush=True)

    def preprocess(self, data):
        rows = []
        for row in data:
            body = row.get("data") if row.get("data") is not None else row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(body)
        return rows

    def inference(self, rows):
        x = torch.stack([features(torch.tensor(r["landmarks"], dtype=torch.float32)) for r in rows])
        with torch.no_grad():
            return torch.softmax(self.model(x), dim=1)

    def postprocess(self, probabilities):
        answers = []
        for p in probabilities:
            k = int(torch.argmax(p))
            answers.append({"label": self.labels[str(k)], "probability": round(float(p[k]), 6)})
        return answers

    def handle(self, data, context):
        rows = self.preprocess(data)
        for row in rows:
            if row.get("raise"):
                raise ValueError("asked to raise")
            if row.get("die"):
                os.kill(os.getpid(), 9)
            if row.get("sleep"):
                time.sleep(row["sleep"])
        answers = [None] * len(rows)
        good = [i for i, row in enumerate(rows) if "status" not in row]
        for i, row in enumerate(rows):
            if "status" in row:
                context.set_response_status(row["status"], "refused by the handler", i)
                answers[i] = {"error": f"refused with {row['status']}"}
        if good:
            for i, answer in zip(good, self.postprocess(self.inference([rows[i] for i in good]))):
                answer["batch_size"] = len(rows)
                answers[i] = answer
        for i in range(len(rows)):
            context.set_response_header(i, "x-handler-batch", str(len(rows)))
        return answers
