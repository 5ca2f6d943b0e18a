"""Stage workers import only what they use: encode + commit without torch, read without torchvision."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image
from ray import cloudpickle

from segbatch.executor import encode_commit, read_slice
from segbatch.sample import write_sample_dataset

LOADED = "print(sorted(m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules))"


def test_encode_and_commit_run_without_importing_torch(tmp_path):
    """What a worker runs for encode + commit: the remote function (pickled by reference, as Ray
    ships it), called on a predicted batch, committing a real part file."""
    payload = tmp_path / "stage.pkl"
    payload.write_bytes(cloudpickle.dumps(encode_commit))
    code = f"""
import pickle, sys
import numpy as np
fn = pickle.loads(open(sys.argv[1], 'rb').read())._function
from segbatch.categories import build_eval_space
from segbatch.stages.encode import EncodeSpec
spec = EncodeSpec("semantic", ("background", "cat"), 0, build_eval_space(("background", "cat"), 0, None), None,
                  "error", {{}})
label_map = np.zeros((4, 5), np.uint8); label_map[1:3, 1:4] = 1
batch = {{"image_id": np.array([7]), "file_name": np.array(["a.jpg"], dtype=object),
          "uri": np.array(["a.jpg"], dtype=object), "width": np.array([5]), "height": np.array([4]),
          "status": np.array(["ok"], dtype=object), "error": np.array([None], dtype=object),
          "t_read": np.array([0.0]), "t_predict": np.array([0.0]),
          "label_map": np.array([label_map, None], dtype=object)[:1]}}
print(fn(spec, sys.argv[2], {{}}, batch))
{LOADED}
"""
    out = subprocess.run([sys.executable, "-c", code, str(payload), str(tmp_path / "parts")], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.splitlines() == ["(1, 0)", "[]"], out.stdout
    assert len(list((tmp_path / "parts").glob("part-*.parquet"))) == 1


def test_read_runs_without_importing_torchvision(tmp_path):
    """The read task's function, pickled as Ray ships it; then the read itself (torch resizes)."""
    write_sample_dataset(str(tmp_path), 1, seed=1)
    payload = tmp_path / "read.pkl"
    payload.write_bytes(cloudpickle.dumps(read_slice))
    image = next((tmp_path / "images").iterdir())
    code = f"""
import pickle, sys
import numpy as np
pickle.loads(open(sys.argv[1], 'rb').read())
{LOADED}
from segbatch.models.preprocess import Preprocess
from segbatch.stages.read import read_batch
out = read_batch({{"uri": np.array([sys.argv[2]], dtype=object)}}, Preprocess(resize=520))
print(out["status"][0], out["image"][0].shape)
{LOADED}
"""
    out = subprocess.run([sys.executable, "-c", code, str(payload), str(image)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0] == "[]", lines  # unpickling the task function imports no torch
    assert lines[1].startswith("ok (3, 520,") and lines[2] == "['torch']", lines  # torch resizes; no torchvision
    assert Image.open(image).size  # a real image was read
