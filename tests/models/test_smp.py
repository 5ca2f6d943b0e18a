"""segmentation-models-pytorch folders (``smp:``) against smp's own use: ``model(normalized image)``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp  # the [smp] extra is in the test extras
import torch

from segbatch.errors import JobError
from segbatch.models.bundle import ModelOptions
from segbatch.models.resolve import load_bundle, resolve_model
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from tests.models import tiny


@pytest.fixture(scope="module")
def unet(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("smp") / "unet"
    return folder, tiny.smp_unet(folder)


def reference(model: torch.nn.Module, path: str) -> np.ndarray:
    """smp's recipe: the encoder's normalisation (get_preprocessing_params), forward, argmax
    of the logits resampled to the image size (the model keeps the input size here)."""
    params = smp.encoders.get_preprocessing_params("tu-resnet18")
    x = torch.from_numpy(tiny.rgb(path).copy()).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(params["mean"]).view(1, 3, 1, 1)) / torch.tensor(params["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(x)
    return logits.argmax(1)[0].numpy()


def test_smp_unet_agrees_with_its_forward_pass(unet, tmp_path):
    folder, model = unet
    card = tmp_path / "card.yaml"
    card.write_text("categories: [background, sky, leaf, fur]\n")
    resolved = resolve_model(f"smp:{folder}", model_card=str(card))
    assert resolved.preprocess.mean == (0.485, 0.456, 0.406) and resolved.preprocess.resize is None
    predictor = Predictor(model=resolved)
    assert predictor.folded > 0 and predictor.bundle.background == 0
    out = predictor(read_batch({"uri": np.array(tiny.photos(), dtype=object)}, predictor.preprocess))
    assert list(out["status"]) == ["ok"] * 3, out["error"]
    ratios, classes = [], []
    for path, ours in zip(tiny.photos(), out["label_map"], strict=True):
        ref = reference(model, path)
        ratios.append(float((ours == ref).mean()))
        classes.append(len(np.unique(ref)))
    print(f"\nsmp unet: pixel agreement with model(normalized image) per photo {ratios}, classes {classes}")
    assert min(classes) >= 2 and min(ratios) >= 0.999  # BatchNorm folded, channels-last: near-ties only


def test_categories_come_from_config_json_and_names_are_checked(unet, tmp_path, caplog):
    folder, _ = unet
    assert resolve_model(f"smp:{folder}").categories == ("class_0", "class_1", "class_2", "class_3")
    assert "carries no names" in caplog.text
    named = tmp_path / "named"
    shutil.copytree(folder, named)
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**config, "id2label": {str(i): f"n{i}" for i in range(4)}}))
    assert resolve_model(f"smp:{named}").categories == ("n0", "n1", "n2", "n3")
    (tmp_path / "card.yaml").write_text("categories: [a, b]\n")
    with pytest.raises(JobError, match=r"model card .* names 2 categories but smp:.* has 4 output channel"):
        resolve_model(f"smp:{folder}", model_card=str(tmp_path / "card.yaml"))


def test_a_binary_model_is_background_versus_its_class(tmp_path):
    folder = tmp_path / "binary"
    model = tiny.smp_unet(folder, classes=1, activation="sigmoid")
    (tmp_path / "card.yaml").write_text("categories: [road]\n")
    bundle = load_bundle(resolve_model(f"smp:{folder}", model_card=str(tmp_path / "card.yaml")), ModelOptions())
    assert bundle.categories == ("background", "road") and bundle.background == 0
    x = bundle.preprocess.normalize(torch.from_numpy(bundle.preprocess.resize_chw(tiny.rgb(tiny.photos()[1])))[None])
    with torch.no_grad():
        logits, via = bundle.semantic(bundle.module, x)
        prob = model(x)
    assert via is None and logits.shape[1] == 2
    assert torch.equal(logits.argmax(1), (prob[:, 0] > 0.5).long())


def test_weights_load_without_any_download_and_shapes_are_checked(unet, tmp_path, monkeypatch):
    folder, _ = unet
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model(f"smp:{folder}", model_card=None)
    bundle = load_bundle(resolved, ModelOptions())  # encoder_weights=None: nothing fetched
    assert sorted(resolved.files) == ["config.json", "model.safetensors"]
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "classes": 7}))
    with pytest.raises(JobError, match=r"'segmentation_head.0.weight' has shape \(4, 8, 3, 3\) in the weights but "
                       r"\(7, 8, 3, 3\) in the model"):  # fmt: skip
        load_bundle(resolve_model(f"smp:{bad}"), ModelOptions())
    assert bundle.task == "semantic"


def test_bad_smp_folders_are_job_errors(unet, tmp_path):
    folder, _ = unet
    with pytest.raises(JobError, match=r"smp model folder '.*missing' is not a folder \(it does not exist\)"):
        resolve_model(f"smp:{tmp_path / 'missing'}")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "segformer"}')
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"")
    with pytest.raises(JobError, match="has no _model_class: not written by smp's save_pretrained"):
        resolve_model(f"smp:{tmp_path / 'hf'}")
    with pytest.raises(JobError, match="segmentation-models-pytorch models are semantic"):
        resolve_model(f"smp:{folder}", task="instance")
