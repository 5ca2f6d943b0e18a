"""End to end on the shared Ray cluster with the models users bring: hf:, smp:, export:, plugins.

NEEDS THE MODEL WIRING (issue 15): JobConfig fields ``task``, ``model_card`` and
``model_revision``, and ``segbatch.driver.plan.prepare`` / ``segbatch.pipeline`` building the
model with ``segbatch.models.resolve.resolve_model`` / ``load_bundle`` (the report of the
models helper has the diff). Each test checks that the run's outputs equal the same model run
in this process by :class:`~segbatch.stages.predict.Predictor` (which tests/models/ check
against each library's own recipe), and Dice against the sample's mask PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from segbatch import JobConfig, JobError
from segbatch.models.resolve import resolve_model
from segbatch.pipeline import run
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from tests.helpers import read_outputs, semantic_maps
from tests.models import tiny

pytestmark = pytest.mark.ray

SHAPES = ["background", "circle", "square", "triangle"]
CARD = """\
task: semantic
categories: [background, circle, square, triangle]
preprocessing: {resize: [64, 96], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
output: {key: seg}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """The five kinds, as users bring them: ``--model`` value → extra JobConfig fields (as JSON)."""
    root = tmp_path_factory.mktemp("models")
    tiny.segformer(root / "segformer", labels=SHAPES)
    tiny.mask2former(root / "mask2former")
    tiny.smp_unet(root / "unet", classes=4)
    (root / "unet-card.yaml").write_text("categories: [background, circle, square, triangle]\n")
    from tests.models.test_exported import Net

    torch.manual_seed(0)
    net = Net().eval()
    tiny.fit_linear_head(net, net.head, lambda m, x: m(x), size=(64, 96))
    torch.export.save(torch.export.export(net, (torch.rand(1, 3, 64, 96),)), str(root / "net.pt2"))
    (root / "net.yaml").write_text(CARD)
    return {
        "hf": f"hf:{root / 'segformer'}",
        "hf-instance": f"hf:{root / 'mask2former'}",
        "smp": f"smp:{root / 'unet'}",
        "smp-card": str(root / "unet-card.yaml"),
        "export": f"export:{root / 'net.pt2'}",
        "export-card": str(root / "net.yaml"),
        "plugin": "tests.models.plugin_fixtures:build_shapes",
    }


def in_process_maps(sample_dir: Path, ref: str, **kwargs) -> dict[str, np.ndarray]:
    predictor = Predictor(model=resolve_model(ref, **kwargs))
    names = sorted(p.name for p in (sample_dir / "images").iterdir())
    batch = {"uri": np.array([str(sample_dir / "images" / n) for n in names], dtype=object)}
    out = predictor(read_batch(batch, predictor.preprocess))
    return dict(zip(names, out["label_map"], strict=True))


def dice_recount(sample_dir: Path, out: Path, names: list[str]) -> dict[str, float]:
    maps = semantic_maps(out)
    inter, pred, gt = (np.zeros(len(names), np.int64) for _ in range(3))
    for file_name, p in maps.items():
        label = np.asarray(Image.open(sample_dir / "masks" / (Path(file_name).stem + ".png")))
        keep = label != 255
        for c in range(len(names)):
            g_c, p_c = (label == c) & keep, (p == c) & keep
            inter[c] += (g_c & p_c).sum()
            pred[c] += p_c.sum()
            gt[c] += g_c.sum()
    return {n: 2 * inter[c] / (pred[c] + gt[c]) for c, n in enumerate(names) if pred[c] + gt[c]}


def stable(out: Path) -> tuple[list, dict]:
    images = pq.read_table(out / "images.parquet").drop_columns(["t_read", "t_predict", "t_encode", "worker"])
    return images.to_pylist(), json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("hf", {}), ("smp", {"model_card": "smp-card"}), ("export", {"model_card": "export-card"}), ("plugin", {})],
)
def test_semantic_models_run_with_dice_against_labels(models, sample_dir, tmp_path, ray_cluster, kind, extra):
    kwargs = {k: models[v] for k, v in extra.items()}
    out = tmp_path / "out"
    summary = run(
        JobConfig(
            input=str(sample_dir / "images"),
            labels=str(sample_dir / "masks"),
            output=str(out),
            model=models[kind],
            batch_size=4,
            **kwargs,
        )
    )
    o = read_outputs(out)
    assert summary.num_errors == 0 and summary.num_images == 12 and o["metrics"]["num_labeled"] == 12
    resolved = resolve_model(models[kind], **kwargs)
    assert o["job"]["model"]["kind"] == ("plugin" if kind == "plugin" else kind)
    assert o["job"]["model"]["weights"]["sha256"] == resolved.sha256
    names = o["job"]["model"]["categories"]
    expected = in_process_maps(sample_dir, models[kind], **kwargs)
    for file_name, m in semantic_maps(out).items():
        assert np.array_equal(m, expected[file_name]), file_name
    recount = dice_recount(sample_dir, out, names)
    for name, dice in recount.items():
        assert o["metrics"]["classes"][name]["dice"] == pytest.approx(dice)
    print(f"\n{kind}: mean Dice {summary.mean_dice} over 12 images; per class {recount}")


def test_a_hf_run_resumes_from_committed_parts(models, sample_dir, tmp_path, ray_cluster):
    out = tmp_path / "out"
    config = JobConfig(
        input=str(sample_dir / "images"),
        labels=str(sample_dir / "masks"),
        output=str(out),
        model=models["hf"],
        batch_size=2,
        rows_per_part=2,
    )
    assert run(config).num_processed == 12
    reference = stable(out)
    parts = sorted((out / "parts").glob("*.parquet"))
    committed = pq.read_table(parts[0])
    for p in parts:
        p.unlink()
    pq.write_table(committed.slice(0, 5), out / "parts" / "part-kept.parquet")
    (out / "_SUCCESS").unlink()
    second = run(config)
    assert (second.num_processed, second.num_skipped) == (7, 5)
    assert stable(out) == reference


def test_a_hf_universal_model_labels_instances(models, sample_dir, tmp_path, ray_cluster):
    out = tmp_path / "out"
    summary = run(
        JobConfig(
            input=str(sample_dir / "images"),
            labels=str(sample_dir / "masks"),
            output=str(out),
            model=models["hf-instance"],
            task="instance",
            score_threshold=0.05,
            batch_size=4,
        )
    )
    o = read_outputs(out)
    assert summary.num_errors == 0 and summary.num_masks > 0
    assert o["job"]["model"]["task"] == "instance" and o["job"]["model"]["categories"][0] == "__background__"
    assert {c["name"] for c in o["coco"]["categories"]} <= set(tiny.INSTANCE_LABELS)
    assert all(a["score"] >= 0.05 for a in o["coco"]["annotations"])
    predictor = Predictor(model=resolve_model(models["hf-instance"], task="instance"))
    predictor.options = type(predictor.options)(score_threshold=0.05)
    names = sorted(p.name for p in (sample_dir / "images").iterdir())
    batch = {"uri": np.array([str(sample_dir / "images" / n) for n in names], dtype=object)}
    expected = predictor(read_batch(batch, predictor.preprocess))
    assert summary.num_masks == sum(len(m) for m in expected["inst_masks"])


def test_a_bad_model_stops_the_job_before_any_work(models, sample_dir, tmp_path, ray_cluster):
    out = tmp_path / "out"
    with pytest.raises(JobError, match=r"is a universal mask2former model: pass --task semantic or --task instance"):
        run(JobConfig(input=str(sample_dir / "images"), output=str(out), model=models["hf-instance"]))
    assert not out.exists()


def test_weights_that_only_the_actors_find_wrong_stop_the_job_and_leave_no_output(sample_dir, tmp_path, ray_cluster):
    """A built-in is planned from its checkpoint's header (no torch on the driver): a tensor of the
    wrong shape inside the network is found where the model is built. The run stops with the
    actor's message, as a job error, and the output it began is removed."""
    from segbatch.models.unet import DEMO_KWARGS, UNet

    state = UNet(**DEMO_KWARGS).state_dict()
    state["stem.0.weight"] = torch.zeros(16, 3, 5, 5)  # 3x3 in the architecture
    torch.save(state, tmp_path / "bad.pt")
    out = tmp_path / "out"
    weights = str(tmp_path / "bad.pt")
    config = JobConfig(input=str(sample_dir / "images"), output=str(out), model="unet", weights=weights)
    with pytest.raises(JobError, match=r"a model actor could not build the model: weights .*bad.pt' do not fit model "
                                       r"'unet': 'stem.0.weight' has shape \(16, 3, 5, 5\)"):  # fmt: skip
        run(config)
    assert not out.exists()


def test_actors_that_build_another_model_than_planned_stop_the_job(sample_dir, tmp_path, ray_cluster, monkeypatch):
    """The guard between the driver's plan and the actors' build: the driver (this process) is made
    to plan other categories than the bundled U-Net has; its actors, in their own processes, are not."""
    import dataclasses

    from segbatch.models import info

    real = info.describe
    monkeypatch.setattr(info, "describe", lambda *a: dataclasses.replace(real(*a), categories=("a", "b", "c", "d")))
    out = tmp_path / "out"
    with pytest.raises(JobError, match=r"built a model whose categories differ from what the run was planned with"):
        run(JobConfig(input=str(sample_dir / "images"), output=str(out), model="unet"))
    assert not out.exists()
