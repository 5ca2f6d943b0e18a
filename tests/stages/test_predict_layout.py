"""The predict stage hands the class map NCHW logits whatever memory layout the model runs in.

A channels-last model (the CPU default) returns channels-last logits; ATen's bilinear resampling
of those to full size ran 5× slower in the model actor, most of the actor's time after the
forward pass (bench/README "Throughput"). The class maps must not depend on the layout."""

from __future__ import annotations

import numpy as np
import torch

from segbatch.models.resolve import resolve_model
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from tests.models import tiny


def test_logits_reach_the_class_map_in_nchw_and_maps_do_not_depend_on_the_layout():
    nhwc = Predictor(model=resolve_model("unet"), device="cpu", channels_last=True)
    nchw = Predictor(model=resolve_model("unet"), device="cpu", channels_last=False)
    assert nhwc.channels_last and not nchw.channels_last
    batch = read_batch({"uri": np.array(tiny.photos(), dtype=object)}, nhwc.preprocess)
    with torch.inference_mode():
        logits, _ = nhwc._logits([batch["image"][0]])
    assert logits.is_contiguous(), logits.stride()
    a, b = nhwc(batch), nchw(batch)
    assert list(a["status"]) == ["ok"] * len(tiny.photos()), a["error"]
    for x, y in zip(a["label_map"], b["label_map"], strict=True):
        # The two layouts' convolutions round differently: nearly every pixel agrees.
        assert x.shape == y.shape and (x == y).mean() > 0.99
