"""Plugins: ``module:function``, the ``segbatch.models`` entry-point group, ``segbatch models`` listing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from segbatch.errors import JobError
from segbatch.models.bundle import ModelOptions
from segbatch.models.plugins import entry_point_names, model_listing
from segbatch.models.resolve import load_bundle, resolve_model
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from tests.models import plugin_fixtures, tiny

REF = "tests.models.plugin_fixtures:build_unet"


def install_entry_point(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution registering ``road-unet`` in the ``segbatch.models`` group, as pip installs one."""
    info = root / "roadmodels-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: roadmodels\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[segbatch.models]\nroad-unet = {REF}\n")
    monkeypatch.syspath_prepend(str(root))


def test_a_plugin_function_runs_like_any_model(tmp_path):
    net = plugin_fixtures.unet_module(None)
    tiny.randomize_batchnorm(net)  # distinct weights that the plugin must receive, fitted to region-shaped maps
    tiny.fit_linear_head(net, net.head, lambda m, x: m(x), size=(64, 96), stride=1)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    resolved = resolve_model(REF, weights=str(tmp_path / "w.pt"))
    assert resolved.kind == "plugin" and resolved.sha256 == hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    predictor = Predictor(model=resolved)
    assert predictor.folded > 0 and predictor.bundle.description == "test U-Net plugin"
    out = predictor(read_batch({"uri": np.array(tiny.photos(), dtype=object)}, predictor.preprocess))
    assert list(out["status"]) == ["ok"] * 3, out["error"]
    pre = plugin_fixtures.PREPROCESS
    for path, ours in zip(tiny.photos(), out["label_map"], strict=True):
        rgb = tiny.rgb(path)
        with torch.no_grad():
            logits = net(pre.normalize(torch.from_numpy(pre.resize_chw(rgb))[None]))["out"]
        ref = torch.nn.functional.interpolate(logits, size=rgb.shape[:2], mode="bilinear").argmax(1)[0].numpy()
        assert len(np.unique(ref)) >= 2
        assert (ours == ref).mean() > 0.999  # BatchNorm folded, channels-last: near-ties only


def test_a_mapping_bundle_and_a_function_without_arguments():
    bundle = load_bundle(resolve_model("tests.models.plugin_fixtures:build_mapping"), ModelOptions())
    assert bundle.categories == tuple(plugin_fixtures.CATEGORIES) and bundle.background == 0
    assert bundle.preprocess == plugin_fixtures.PREPROCESS


def test_entry_points_register_models_by_name_and_are_listed(tmp_path, monkeypatch):
    install_entry_point(tmp_path, monkeypatch)
    assert "road-unet" in entry_point_names()
    resolved = resolve_model("road-unet")
    assert resolved.settings["function"] == REF and resolved.settings["distribution"] == "roadmodels 1.2"
    rows = {r["name"]: r for r in model_listing()}
    assert rows["road-unet"]["kind"] == "plugin" and rows["road-unet"]["description"] == f"{REF} (roadmodels 1.2)"
    assert rows["unet"]["kind"] == "built-in" and rows["unet"]["categories"][1] == "circle"
    assert {"hf:HUB_ID_OR_FOLDER", "smp:FOLDER_OR_HUB_ID", "export:FILE.pt2", "module:function"} <= set(rows)
    with pytest.raises(JobError, match=r"unknown model 'road'; valid models: .*unet, road-unet; or hf:"):
        resolve_model("road")


def test_listing_models_imports_no_optional_library():
    import subprocess
    import sys

    code = (
        "import sys; from segbatch.models.plugins import model_listing; model_listing(); "
        "print(sorted(m for m in ('transformers', 'segmentation_models_pytorch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("raises", r"plugin '.*:raises' raised RuntimeError: checkpoint server unreachable"),
        ("returns_a_module", r"returned a UNet; expected a segbatch ModelBundle or a mapping with keys module, task"),
        ("wrong_channels", r"has 4 categories but returns logits of shape \(1, 3, 64, 64\); expected \(N, 4, h, w\)"),
        ("missing_keys", r"returned a mapping with unknown keys \['labels'\] without \['categories', 'preprocess'\]"),
        ("NOT_A_FUNCTION", r"'tests.models.plugin_fixtures:NOT_A_FUNCTION' is a int, not a function"),
        ("nope", r"module 'tests.models.plugin_fixtures' has no 'nope'"),
    ],
)
def test_a_plugin_that_raises_or_returns_the_wrong_thing_is_a_job_error(name, message):
    with pytest.raises(JobError, match=message):
        resolve_model(f"tests.models.plugin_fixtures:{name}")


def test_unknown_prefixes_and_modules_are_job_errors():
    with pytest.raises(JobError, match=r"cannot import module 'tf' \(ModuleNotFoundError.*use a model prefix: hf:"):
        resolve_model("tf:road")
    with pytest.raises(JobError, match=r"unknown model prefix 's3:' in 's3://b/m'; valid: hf:, smp:, export:"):
        resolve_model("s3://b/m")
    with pytest.raises(JobError, match=r"model 'hf:' names nothing after 'hf:'"):
        resolve_model("hf:")
