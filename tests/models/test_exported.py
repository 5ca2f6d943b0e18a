"""Exported programs (``export:FILE.pt2`` + model card) against running the program directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segbatch.errors import JobError
from segbatch.models.bundle import ModelOptions
from segbatch.models.preprocess import Preprocess
from segbatch.models.resolve import load_bundle, resolve_model
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from tests.models import tiny

CARD = """\
task: semantic
categories: [background, sky, leaf, fur]
preprocessing:
  resize: [64, 96]
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
output:
  key: seg
"""


class Net(torch.nn.Module):
    """Conv-BN-ReLU, stride 4, 1×1 head: ``{"seg": (N, 4, h/4, w/4), "aux": …}``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.head(self.body(x)), "aux": x.mean((2, 3))}


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = Net().eval()
    tiny.randomize_batchnorm(net)
    tiny.fit_linear_head(net, net.head, lambda m, x: m(x), size=(64, 96))
    path = tmp_path_factory.mktemp("export") / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(1, 3, 64, 96),)), str(path))
    return path


def write_card(tmp_path: Path, text: str = CARD) -> str:
    (tmp_path / "card.yaml").write_text(text)
    return str(tmp_path / "card.yaml")


def test_exported_program_agrees_with_running_it_directly(program, tmp_path):
    resolved = resolve_model(f"export:{program}", model_card=write_card(tmp_path))
    predictor = Predictor(model=resolved)
    assert predictor.bundle.max_batch == 1 and predictor.folded == 0 and not predictor.channels_last
    out = predictor(read_batch({"uri": np.array(tiny.photos(), dtype=object)}, predictor.preprocess))
    assert list(out["status"]) == ["ok"] * 3, out["error"]
    loaded = torch.export.load(str(program)).module()
    pre = Preprocess(resize=(64, 96))
    ratios = []
    for path, ours in zip(tiny.photos(), out["label_map"], strict=True):
        rgb = tiny.rgb(path)
        with torch.no_grad():
            logits = loaded(pre.normalize(torch.from_numpy(pre.resize_chw(rgb))[None]))["seg"]
        ref = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False).argmax(1)[0].numpy()
        assert len(np.unique(ref)) >= 2
        ratios.append(float((ours == ref).mean()))
    print(f"\nexported program: pixel agreement with running it directly per photo {ratios}")
    assert min(ratios) == 1.0


@pytest.mark.parametrize(
    ("card", "message"),
    [
        (None, r"export:.*net.pt2 needs a --model-card"),
        (
            CARD.replace("fur]", "fur, extra]"),
            r"names 5 categories but export:.* returns logits of shape \(1, 4, 16, 24\)",
        ),
        (
            CARD.replace("[64, 96]", "64"),
            r"was exported for 64x96 inputs only, but model card .* resizes by shorter side 64",
        ),
        (
            CARD.replace("key: seg", "key: logits"),
            r"the model's output has no 'logits': dict with keys \['aux', 'seg'\]",
        ),
        (CARD.replace("task: semantic", "task: panoptic"), r"task must be one of semantic, instance, got 'panoptic'"),
        (CARD.replace("  mean: [0.485, 0.456, 0.406]\n", ""), r"preprocessing must give mean"),
        (CARD.replace("resize:", "size:"), r"unknown preprocessing key\(s\) \['size'\]"),
    ],
)
def test_a_card_that_disagrees_with_the_program_is_a_job_error(program, tmp_path, card, message):
    with pytest.raises(JobError, match=message):
        resolve_model(f"export:{program}", model_card=None if card is None else write_card(tmp_path, card))


def test_not_a_program_and_a_missing_file_are_job_errors(tmp_path):
    (tmp_path / "x.pt2").write_bytes(b"not a zip")
    with pytest.raises(JobError, match=r"is not a torch.export program \(torch.export.save\): not a zip archive"):
        resolve_model(f"export:{tmp_path / 'x.pt2'}", model_card=write_card(tmp_path))
    with pytest.raises(JobError, match=r"exported program '.*missing.pt2' does not exist"):
        resolve_model(f"export:{tmp_path / 'missing.pt2'}", model_card=write_card(tmp_path))


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_an_archive_member_that_needs_full_unpickling_is_refused(program, tmp_path):
    """torch.export.load would retry its sample inputs with weights_only=False: never get there."""
    import io
    import zipfile

    src = zipfile.ZipFile(program)
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(bad, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                buf = io.BytesIO()
                torch.save({"x": Payload()}, buf)
                data = buf.getvalue()
            out.writestr(item, data)
    with pytest.raises(JobError, match=r"archive member '.*sample_inputs/model.pt' does not load with "
                       r"torch.load\(weights_only=True\)"):  # fmt: skip
        resolve_model(f"export:{bad}", model_card=write_card(tmp_path))


def test_the_program_travels_as_bytes(program, tmp_path):
    copy = tmp_path / "copy.pt2"
    copy.write_bytes(program.read_bytes())
    resolved = resolve_model(f"export:{copy}", model_card=write_card(tmp_path))
    copy.unlink()
    bundle = load_bundle(resolved, ModelOptions())
    assert bundle.categories == ("background", "sky", "leaf", "fur") and bundle.task == "semantic"
    assert resolved.identity_options()["model_card_sha256"] is not None
