"""Models: registry, a tiny-input smoke test per model, and every way of loading weights."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from segbatch.errors import JobError
from segbatch.models import ModelOptions, Preprocess, get_model_spec, list_models
from segbatch.models.unet import TransposedConvUp, UNet
from segbatch.models.weights import ResolvedWeights, load_model, resolve_weights, save_checkpoint
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch

ALL_MODELS = [
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet101",
    "deeplabv3_resnet50",
    "fcn_resnet101",
    "fcn_resnet50",
    "lraspp_mobilenet_v3_large",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "unet",
]
NONE = ResolvedWeights(source="none", data=None, sha256=None)


def test_registry_lists_every_model_with_its_metadata():
    specs = {s.name: s for s in list_models()}
    assert sorted(specs) == ALL_MODELS
    voc = specs["deeplabv3_resnet50"]
    assert voc.task == "semantic" and len(voc.categories) == 21 and voc.categories[15] == "person"
    assert voc.preprocess == Preprocess(resize=520, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert specs["maskrcnn_resnet50_fpn_v2"].task == "instance"
    assert specs["maskrcnn_resnet50_fpn_v2"].categories[1] == "person"
    assert specs["unet"].categories == ("background", "circle", "square", "triangle")


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(JobError, match=r"unknown model 'deeplab'; valid models: deeplabv3_mobilenet_v3_large, .*unet"):
        get_model_spec("deeplab")


def tiny_batch(sizes=((40, 56), (40, 56), (33, 47))) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    import io

    from PIL import Image

    uris = []
    for i, (h, w) in enumerate(sizes):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        uris.append(f"memory://tiny/{i}.png")
        import fsspec

        fsspec.filesystem("memory").pipe(f"/tiny/{i}.png", buf.getvalue())
    n = len(sizes)
    return {
        "image_id": np.arange(n),
        "file_name": np.array([f"{i}.png" for i in range(n)], dtype=object),
        "uri": np.array(uris, dtype=object),
    }


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_runs_on_a_tiny_input(name):
    """Seeded random weights, small input: the whole predict path of every registered model."""
    spec = get_model_spec(name)
    options = ModelOptions(score_threshold=0.0, min_size=64)
    predictor = Predictor(name, NONE, options)
    small = Preprocess(
        resize=48 if spec.preprocess.resize else None, mean=spec.preprocess.mean, std=spec.preprocess.std
    )
    batch = read_batch(tiny_batch(), small)
    out = predictor(batch)
    assert list(out["status"]) == ["ok"] * 3, out["error"]
    assert "image" not in out
    for i, (h, w) in enumerate([(40, 56), (40, 56), (33, 47)]):
        if spec.task == "semantic":
            lm = out["label_map"][i]
            assert lm.shape == (h, w) and lm.dtype == np.uint8 and lm.max() < len(spec.categories)
        else:
            masks, labels, scores = out["inst_masks"][i], out["inst_labels"][i], out["inst_scores"][i]
            assert masks.shape[1:] == (h, w) and len(masks) == len(labels) == len(scores)
            assert (scores >= 0.0).all() and set(np.unique(masks)) <= {0, 1}
    assert (out["t_predict"] > 0).all()


@pytest.mark.parametrize(
    "name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "fcn_resnet50"]
)
def test_coarse_logits_are_the_forward_pass_before_its_final_upsampling(name):
    """The predictor skips the model's own upsampling to the input size; resampling the
    coarse logits that way must give the forward pass's output exactly (this breaks if a
    torchvision release changes those forwards)."""
    spec = get_model_spec(name)
    torch.manual_seed(0)
    module = spec.build({"num_classes": 3}, ModelOptions()).eval()
    x = torch.rand(1, 3, 67, 90)
    with torch.inference_mode():
        coarse = spec.coarse_logits(module, x)
        assert coarse.shape[:2] == (1, 3) and coarse.shape[-1] < 90
        up = torch.nn.functional.interpolate(coarse, size=(67, 90), mode="bilinear", align_corners=False)
        assert torch.equal(up, module(x)["out"])


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_is_an_option_of_the_semantic_models(channels_last):
    predictor = Predictor("unet", NONE, ModelOptions(), channels_last=channels_last)
    conv = predictor.module.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert not (
        Predictor("maskrcnn_resnet50_fpn", NONE, ModelOptions(min_size=64), channels_last=channels_last).channels_last
    )  # Mask R-CNN takes lists of images of different sizes: default layout
    out = predictor(read_batch(tiny_batch(), predictor.preprocess))
    assert list(out["status"]) == ["ok"] * 3, out["error"]


def test_a_failing_image_becomes_an_error_row_and_its_batch_goes_on():
    predictor = Predictor("unet", NONE, ModelOptions())
    batch = read_batch(tiny_batch(), predictor.preprocess)
    batch["image"][1] = np.zeros((5, 40, 56), np.uint8)  # 5 channels: the model cannot take it
    out = predictor(batch)
    assert list(out["status"]) == ["ok", "error", "ok"]
    assert out["error"][1].startswith("predict: RuntimeError")
    assert out["label_map"][0].shape == (40, 56)


def test_unet_any_size_any_classes():
    block = TransposedConvUp(32, 8)
    assert block(torch.zeros(1, 32, 5, 7)).shape == (1, 8, 10, 14)
    assert block[3].groups == block[3].in_channels  # depthwise transposed convolution
    net = UNet(num_classes=7, base_channels=4, depth=3).eval()
    assert net(torch.zeros(2, 3, 37, 53))["out"].shape == (2, 7, 37, 53)


def _state_dict_file(tmp_path, module: torch.nn.Module, name: str = "w.pth") -> str:
    path = tmp_path / name
    torch.save(module.state_dict(), path)
    return str(path)


def test_plain_state_dict_infers_num_classes(tmp_path):
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(1)
    ref = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5).eval()
    path = _state_dict_file(tmp_path, ref)
    spec = get_model_spec("lraspp_mobilenet_v3_large")
    weights = resolve_weights(spec, path)
    assert weights.sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    loaded = load_model(spec, weights, ModelOptions())
    assert loaded.categories == tuple(f"class_{i}" for i in range(5))
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.module(x)["out"], ref(x)["out"])


def test_torchvision_state_dict_with_aux_head_loads_and_drops_it(tmp_path):
    from torchvision.models.segmentation import fcn_resnet50

    ref = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    loaded = load_model(
        get_model_spec("fcn_resnet50"),
        resolve_weights(get_model_spec("fcn_resnet50"), _state_dict_file(tmp_path, ref)),
        ModelOptions(),
    )
    assert loaded.module.aux_classifier is None
    assert loaded.categories[0] == "__background__" and loaded.background == 0


def test_default_weights_come_from_the_torch_home_cache(tmp_path, monkeypatch):
    """DEFAULT resolves torchvision's weight enum to $TORCH_HOME/hub/checkpoints/<file>."""
    from torchvision.models.segmentation import LRASPP_MobileNet_V3_Large_Weights, lraspp_mobilenet_v3_large

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = LRASPP_MobileNet_V3_Large_Weights.DEFAULT.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(2)
    ref = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    _state_dict_file(cache, ref, os.path.basename(url))
    spec = get_model_spec("lraspp_mobilenet_v3_large")
    weights = resolve_weights(spec, "DEFAULT")
    assert weights.source == "DEFAULT:LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"
    loaded = load_model(spec, weights, ModelOptions())
    assert loaded.categories == spec.categories and len(loaded.categories) == 21
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.module(x)["out"], ref(x)["out"])


def test_default_weights_missing_from_the_cache_name_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # A closed local proxy makes the download fail here and anywhere else, without a mock.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(JobError, match=r"not in the TORCH_HOME cache \(.*hub/checkpoints/lraspp"):
        resolve_weights(get_model_spec("lraspp_mobilenet_v3_large"), "DEFAULT")


def test_segbatch_checkpoint_carries_categories_and_preprocessing(tmp_path):
    net = UNet(num_classes=3, base_channels=4, depth=2)
    pre = Preprocess(resize=(32, 48), mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    path = str(tmp_path / "u.pt")
    save_checkpoint(path, "unet", net, ["bg", "leaf", "stem"], pre, {"num_classes": 3, "base_channels": 4, "depth": 2})
    spec = get_model_spec("unet")
    loaded = load_model(spec, resolve_weights(spec, path), ModelOptions())
    assert loaded.categories == ("bg", "leaf", "stem") and loaded.preprocess == pre and loaded.background == 0
    with pytest.raises(JobError, match="checkpoint of model 'unet', not 'lraspp_mobilenet_v3_large'"):
        load_model(
            get_model_spec("lraspp_mobilenet_v3_large"),
            resolve_weights(get_model_spec("lraspp_mobilenet_v3_large"), path),
            ModelOptions(),
        )


class NotWeights:
    pass


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", r"cannot load weights .*weights_only=True\): UnpicklingError"),
        ("pickle", r"cannot load weights .*weights_only=True\): UnpicklingError: Weights only load failed"),
        ("other-model", "do not fit model 'unet'|do not look like a state_dict of 'unet'"),
        ("missing", "does not exist"),
    ],
)
def test_unreadable_weights_are_job_errors(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content == "pickle":
        torch.save({"obj": NotWeights()}, path)
    elif content == "other-model":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    spec = get_model_spec("unet")
    with pytest.raises(JobError, match=message):
        load_model(spec, resolve_weights(spec, str(path)), ModelOptions())


def test_weights_none_warns_loudly_and_is_seeded(caplog):
    spec = get_model_spec("unet")
    with caplog.at_level(logging.WARNING):
        w = resolve_weights(spec, "none")
    assert "RANDOMLY INITIALISED" in caplog.text
    a, b = load_model(spec, w, ModelOptions()), load_model(spec, w, ModelOptions())
    for pa_, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        torch.testing.assert_close(pa_, pb)


def test_channels_last_applies_on_the_cpu_and_under_gpu_autocast_only():
    from segbatch.stages.predict import use_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last("semantic", cpu, None)
    assert not use_channels_last("semantic", cuda, None)  # cuDNN fp32: NHWC measured 1.5× slower
    assert use_channels_last("semantic", cuda, torch.bfloat16)
    assert use_channels_last("semantic", cuda, torch.float16)
    assert not use_channels_last("instance", cpu, None)
    assert not use_channels_last("instance", cuda, torch.float16)


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "unet"])
def test_folding_batchnorm_removes_every_batchnorm_and_keeps_the_logits(name):
    from segbatch.models.fold import fold_batchnorm

    torch.manual_seed(0)
    module = get_model_spec(name).build({"num_classes": 5}, ModelOptions())
    for m in module.modules():  # statistics far from the identity, so that folding has work to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.2, 3.0)
            m.weight.data.normal_(1, 0.3)
            m.bias.data.normal_(0, 0.3)
    module.eval()
    count = sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
    # The U-Net's depthwise transposed convolutions keep their BatchNorm (see _foldable).
    kept = sum(isinstance(m, torch.nn.ConvTranspose2d) and m.groups > 1 for m in module.modules())
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        before = module(x)["out"]
    assert fold_batchnorm(module) == count - kept > 0
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()) == kept
    with torch.inference_mode():
        after = module(x)["out"]
    scale = before.abs().max().item()
    assert (after - before).abs().max().item() < 1e-5 * max(scale, 1.0)  # rounding only


def test_folding_batchnorm_needs_eval_mode():
    from segbatch.models.fold import fold_batchnorm

    with pytest.raises(JobError, match="eval mode, got Sequential in training mode"):
        fold_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train())


@pytest.mark.parametrize("fold", [True, False])
def test_fold_batchnorm_is_an_option_of_the_predictor(fold):
    predictor = Predictor("unet", NONE, ModelOptions(), fold_batchnorm=fold)

    def batchnorms(module: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())

    total = batchnorms(Predictor("unet", NONE, ModelOptions(), fold_batchnorm=False).module)
    assert (predictor.folded > 0) == fold
    assert batchnorms(predictor.module) == total - predictor.folded
    out = predictor(read_batch(tiny_batch(), predictor.preprocess))
    assert list(out["status"]) == ["ok"] * 3, out["error"]
