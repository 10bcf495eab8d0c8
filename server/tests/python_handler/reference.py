"""Calls the handler's functions directly, as a TorchServe user would in a notebook, on the inputs in the JSON
file given; prints one answer per input."""
import json
import sys


class Context:
    def __init__(self, model_dir):
        self.system_properties = {"model_dir": model_dir, "gpu_id": None}


model_dir, inputs = sys.argv[1], sys.argv[2]
sys.path.insert(0, model_dir)
from sign_handler import SignHandler  # noqa: E402

handler = SignHandler()
handler.initialize(Context(model_dir))
with open(inputs) as f:
    rows = json.load(f)
answers = [handler.postprocess(handler.inference(handler.preprocess([{"body": row}])))[0] for row in rows]
print(json.dumps(answers))
