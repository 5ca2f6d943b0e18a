"""``--model`` resolution: the built-ins through the same bundle, weights that do not fit, cards."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from segbatch.errors import JobError
from segbatch.models import ModelOptions, get_model_spec
from segbatch.models.card import parse_card
from segbatch.models.resolve import load_bundle, parse_model_ref, resolve_model
from segbatch.models.weights import resolve_weights
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from tests.models.test_models import tiny_batch


def test_builtins_resolve_to_the_same_weights_and_predictions():
    resolved = resolve_model("unet")
    assert resolved.kind == "builtin" and resolved.identity_options() == {}  # earlier outputs still resume
    assert resolved.sha256 == resolve_weights(get_model_spec("unet"), "DEFAULT").sha256
    new = Predictor(model=resolved)
    old = Predictor("unet", resolve_weights(get_model_spec("unet"), "DEFAULT"), ModelOptions())
    batch = tiny_batch()
    a, b = new(read_batch(batch, new.preprocess)), old(read_batch(batch, old.preprocess))
    for x, y in zip(a["label_map"], b["label_map"], strict=True):
        assert np.array_equal(x, y)
    assert new.bundle.fast_paths and new.bundle.name == "unet" and new.folded == old.folded > 0


def test_builtin_options_that_do_not_apply_are_job_errors(tmp_path):
    (tmp_path / "card.yaml").write_text("task: semantic\n")
    with pytest.raises(JobError, match=r"--model-card applies to hf:, smp:, export: models and plugins"):
        resolve_model("unet", model_card=str(tmp_path / "card.yaml"))
    with pytest.raises(JobError, match=r"--model-revision 'main' applies to hf: and smp: hub ids, not 'unet'"):
        resolve_model("unet", revision="main")
    with pytest.raises(JobError, match=r"model 'unet' is a semantic model; --task 'instance' does not apply"):
        resolve_model("unet", task="instance")
    with pytest.raises(JobError, match=r"task must be one of semantic, instance, got 'panoptic'"):
        resolve_model("unet", task="panoptic")


def test_a_state_dict_with_a_tensor_of_the_wrong_shape_names_key_shapes_and_fix(tmp_path):
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    state = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).state_dict()
    state["backbone.1.block.0.0.weight"] = torch.zeros(8, 16, 3, 3)
    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "w.pth").write_bytes(buf.getvalue())
    resolved = resolve_model("lraspp_mobilenet_v3_large", weights=str(tmp_path / "w.pth"))
    with pytest.raises(JobError) as err:
        load_bundle(resolved, ModelOptions())
    message = str(err.value)
    assert "w.pth" in message and "'backbone.1.block.0.0.weight' has shape (8, 16, 3, 3) in the weights" in message
    assert "but (16, 1, 3, 3) in the model" in message and "pass weights trained for 'lraspp_mobilenet" in message


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("hf:nvidia/segformer-b2-finetuned-ade-512-512", ("hf", "nvidia/segformer-b2-finetuned-ade-512-512")),
        ("hf:./my-mask2former", ("hf", "./my-mask2former")),
        ("smp:./my-unet-effb3", ("smp", "./my-unet-effb3")),
        ("export:road.pt2", ("export", "road.pt2")),
        ("mypkg.models:build_model", ("plugin", "mypkg.models:build_model")),
        ("deeplabv3_resnet50", ("builtin", "deeplabv3_resnet50")),
    ],
)
def test_model_references(ref, parsed):
    assert parse_model_ref(ref) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: semantic\nlabels: [a]\n", r"unknown key\(s\) \['labels'\]; valid keys: task, categories"),
        ("categories: {0: a, 2: b}\n", r"category ids must be 0..1, got \[0, 2\]"),
        ("output: {key: [1]}\n", r"output.key must be a name or an index"),
        ("- a\n- b\n", r"must hold a mapping with keys task, categories"),
        ("task: [semantic\n", r"is not valid YAML/JSON"),
        ("preprocessing: {resize: 512, resample: cubic}\n", r"unknown resample filter 'cubic'"),
    ],
)
def test_bad_model_cards_name_the_key(text, message):
    with pytest.raises(JobError, match=message):
        parse_card(text.encode(), "card.yaml")


def test_a_missing_card_is_a_job_error(tmp_path):
    with pytest.raises(JobError, match=r"model card '.*nope.yaml' does not exist"):
        resolve_model("export:x.pt2", model_card=str(tmp_path / "nope.yaml"))
