"""The driver plans a built-in model without torch: the catalog (segbatch.models.catalog) and
checkpoints read by their header (segbatch.models.checkpoint_header) say what the model built
from torchvision's weight enums and ``torch.load`` says."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from segbatch.errors import JobError
from segbatch.models import ModelOptions, Preprocess, list_models
from segbatch.models.catalog import BUILTINS, VOC_CATEGORIES, builtin_info, fast_paths, torch_hub_dir
from segbatch.models.checkpoint_header import TensorShape, read_checkpoint
from segbatch.models.info import ModelInfo, describe
from segbatch.models.resolve import load_bundle, resolve_model
from segbatch.models.unet import UNet
from segbatch.models.weights import save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_the_catalog_says_what_the_registry_builds_from_torchvision():
    specs = {s.name: s for s in list_models()}
    assert sorted(specs) == sorted(BUILTINS)
    for name, spec in specs.items():
        e = BUILTINS[name]
        assert (e.task, e.description, e.categories, e.preprocess, e.default_weights) == (
            spec.task,
            spec.description,
            spec.categories,
            spec.preprocess,
            spec.default_weights,
        ), name
        assert dict(e.default_kwargs) == dict(spec.default_kwargs), name
        assert e.fast_paths == fast_paths(spec.task, spec.coarse_logits is not None), name
        with torch.device("meta"):  # the architecture's shapes, no memory and no init cost
            module = spec.build(spec.default_kwargs, ModelOptions())
        assert module.state_dict()[e.classes_key].shape[0] == len(e.categories), name


def test_the_torch_hub_folder_is_torchs_own(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert torch_hub_dir() == torch.hub.get_dir()
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert torch_hub_dir() == torch.hub.get_dir() == str(tmp_path / "xdg" / "torch" / "hub")


def _save(obj, path: Path, **kwargs) -> str:
    torch.save(obj, path, **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Name → (model, --weights) for the ways a built-in gets its weights."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    five = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5).eval()
    unet = UNet(num_classes=3, base_channels=4, depth=2)
    pre = Preprocess(resize=(32, 48), mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    kwargs = {"num_classes": 3, "base_channels": 4, "depth": 2}
    save_checkpoint(str(root / "own.pt"), "unet", unet, ["bg", "road", "car"], pre, kwargs)
    voc = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).eval().state_dict()
    return {
        "none": ("lraspp_mobilenet_v3_large", "none"),
        "state_dict": ("lraspp_mobilenet_v3_large", _save(voc, root / "voc.pth")),
        "five_classes": ("lraspp_mobilenet_v3_large", _save(five.state_dict(), root / "five.pth")),
        "legacy_format": (
            "lraspp_mobilenet_v3_large",
            _save(voc, root / "old.pth", _use_new_zipfile_serialization=False),
        ),
        "bundled": ("unet", "DEFAULT"),
        "segbatch_checkpoint": ("unet", str(root / "own.pt")),
        "instance": ("maskrcnn_resnet50_fpn", "none"),
    }


@pytest.mark.parametrize(
    "case", ["none", "state_dict", "five_classes", "legacy_format", "bundled", "segbatch_checkpoint", "instance"]
)
def test_the_planned_model_is_the_built_model(checkpoints, case):
    model, weights = checkpoints[case]
    resolved = resolve_model(model, weights)
    planned = describe(resolved, ModelOptions())
    built = ModelInfo.of(load_bundle(resolved, ModelOptions()))
    assert planned == built
    assert planned.signature() == built.signature()
    header = builtin_info(model, resolved.files.get("checkpoint"), resolved.source)
    # Every zip-format checkpoint is planned without torch; the legacy format goes through torch.
    assert (header is None) == (case == "legacy_format")
    if case == "five_classes":
        assert planned.categories == tuple(f"class_{i}" for i in range(5)) and planned.background is None
    if case == "segbatch_checkpoint":
        assert planned.categories == ("bg", "road", "car") and planned.preprocess.resize == (32, 48)


def test_the_header_holds_keys_shapes_and_plain_values(checkpoints):
    obj = read_checkpoint(Path(checkpoints["segbatch_checkpoint"][1]).read_bytes())
    assert obj["arch"] == "unet" and obj["categories"] == ["bg", "road", "car"]
    assert obj["state_dict"]["head.weight"] == TensorShape((3, 4, 1, 1))
    assert obj["model_kwargs"] == {"num_classes": 3, "base_channels": 4, "depth": 2}


def test_what_the_header_reader_does_not_know_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"state_dict": Evil()}, protocol=2))
    assert read_checkpoint(buf.getvalue()) is None
    assert read_checkpoint(b"\x00" * 64) is None
    assert not marker.exists()


def test_weights_the_files_show_to_be_wrong_fail_on_the_driver(tmp_path):
    net = UNet(num_classes=4, base_channels=16, depth=3)
    no_head = {k: v for k, v in net.state_dict().items() if k != "head.weight"}
    with pytest.raises(JobError, match=r"do not look like a state_dict of 'unet': no key 'head.weight'"):
        describe(resolve_model("unet", _save(no_head, tmp_path / "nohead.pt")), ModelOptions())
    path = str(tmp_path / "other.pt")
    save_checkpoint(path, "unet", net, ["a", "b", "c", "d"], Preprocess(resize=64))
    with pytest.raises(JobError, match=r"are a checkpoint of model 'unet', not 'lraspp_mobilenet_v3_large'"):
        describe(resolve_model("lraspp_mobilenet_v3_large", path), ModelOptions())
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(JobError, match=r"cannot load weights .*weights_only=True"):
        describe(resolve_model("unet", str(tmp_path / "garbage.pt")), ModelOptions())


def test_planning_a_built_in_job_imports_no_torch(tmp_path):
    """The driver's planning in a fresh process: listing, labels, weights and the model's categories
    without torch or torchvision in sys.modules."""
    torch.manual_seed(1)
    weights = _save(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict(), tmp_path / "w.pth")
    script = f"""
import json, sys
from segbatch.config import JobConfig
from segbatch.driver.plan import prepare
from segbatch.sample import write_sample_dataset
write_sample_dataset({str(tmp_path / "data")!r}, 3, seed=1)
prep = prepare(JobConfig(input={str(tmp_path / "data" / "images")!r}, labels={str(tmp_path / "data" / "masks")!r},
                         output={str(tmp_path / "out")!r}, model="lraspp_mobilenet_v3_large", weights={weights!r}))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps({{"heavy": heavy[:5], "categories": list(prep.loaded.categories),
                   "images": prep.plan.manifest.num_rows, "versions": prep.job["versions"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert out["categories"] == list(VOC_CATEGORIES) and out["images"] == 3
    assert out["versions"]["torch"] == torch.__version__
