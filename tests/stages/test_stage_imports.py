"""Stage workers import only what they use: encode + write without torch, read without torchvision."""

from __future__ import annotations

import subprocess
import sys

from ray import cloudpickle

from segbatch.stages.encode import encode_batch
from segbatch.stages.sink import PartsDatasink


def test_encode_and_write_stages_unpickle_without_importing_torch(tmp_path):
    # What a Ray worker receives for these stages: the function and the datasink, pickled
    # by reference, as Ray Data ships them.
    payload = tmp_path / "stages.pkl"
    payload.write_bytes(cloudpickle.dumps((encode_batch, PartsDatasink(str(tmp_path / "parts"), {}, 4))))
    code = (
        "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read()); "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(payload)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_read_stage_unpickles_without_importing_torchvision(tmp_path):
    from segbatch.models.registry import Preprocess
    from segbatch.stages.feed import read_slices

    payload = tmp_path / "read.pkl"
    payload.write_bytes(cloudpickle.dumps((read_slices, Preprocess(resize=520))))
    code = (
        "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read()); "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(payload)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['torch']", out.stdout  # torch resizes; torchvision is the model's business
