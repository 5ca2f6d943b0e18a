"""Export options without Ray: form names, orders, subsets and limits, from the config, the CLI and
a run folder built by hand (the end-to-end run is tests/test_e2e_exports.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segbatch.cli import build_parser, config_from_args, main
from segbatch.config import JobConfig
from segbatch.errors import JobError
from segbatch.outputs.exports import ExportSettings, parse_formats, stale_forms
from segbatch.outputs.folder import OutDir
from segbatch.outputs.schema import IMAGES_SCHEMA
from segbatch.outputs.selection import select_images
from tests.outputs.test_label_studio import make_run

BASE = {"input": "in", "output": "out", "model": "unet"}


@pytest.mark.parametrize(
    ("value", "forms"),
    [
        ("label-studio,cvat-masks", ("label-studio", "cvat-masks")),
        (" cvat-masks , coco,cvat-masks,", ("cvat-masks", "coco")),  # spaces, repeats and empty items
        (["coco"], ("coco",)),
        ((), ()),
        (None, ()),
    ],
)
def test_form_names_are_parsed_in_order_once(value, forms):
    assert parse_formats(value, "exports") == forms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("label-studio,yolo", "exports: 'yolo' is not an export form; valid: ['coco', 'label-studio', 'cvat-masks']"),
        (["coco", 3], "exports: 3 is not an export form"),
        (7, "exports must be a list of export forms"),
    ],
)
def test_bad_form_names_are_named_with_the_valid_ones(value, message):
    with pytest.raises(JobError) as err:
        parse_formats(value, "exports")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("exports", ["label_studio"], "exports: 'label_studio' is not an export form; valid: ['coco', "),
        ("export_order", "random", "order 'random' is not one of ['image-id', 'least-confident', "),
        ("export_limit", 0, "export_limit must be an integer >= 1, got 0"),
        ("export_limit", True, "export_limit must be an integer >= 1, got True"),
        ("image_root", "ftp://host/x", "image root 'ftp://host/x' is not a URL Label Studio can resolve"),
    ],
)
def test_bad_export_config_values_are_named(field, value, message):
    with pytest.raises(JobError) as err:
        JobConfig(**{**BASE, field: value})
    assert message in str(err.value)


def test_a_label_studio_export_of_an_input_it_cannot_load_needs_an_image_root():
    with pytest.raises(JobError, match=r"Label Studio cannot load images of input 'hf://org/set': pass an image root"):
        JobConfig(**{**BASE, "input": "hf://org/set", "exports": ("label-studio",)})
    JobConfig(**{**BASE, "input": "hf://org/set", "exports": ("cvat-masks",)})  # CVAT holds no image URLs
    for ok in ("s3://b/in", "/data/in", "file:///data/in"):
        JobConfig(**{**BASE, "input": ok, "exports": ("label-studio",)})
    JobConfig(**{**BASE, "input": "hf://org/set", "exports": ("label-studio",), "image_root": "https://cdn.x/set"})


def test_the_export_flags_reach_the_config_and_job_json(tmp_path):
    args = build_parser().parse_args(
        [
            "run",
            "--input",
            "in",
            "--output",
            "out",
            "--model",
            "unet",
            "--export",
            "label-studio,cvat-masks",
            "--order",
            "least-confident",
            "--limit",
            "5",
            "--image-root",
            "s3://b/new",
        ]
    )
    config = config_from_args(args)
    assert config.exports == ("label-studio", "cvat-masks")
    assert (config.export_order, config.export_limit, config.image_root) == ("least-confident", 5, "s3://b/new")
    public = config.public_dict()
    assert public["exports"] == ["label-studio", "cvat-masks"] and public["export_limit"] == 5
    ls = config.export_settings().label_studio()
    assert (ls.order, ls.limit, ls.image_root) == ("least-confident", 5, "s3://b/new")
    # A YAML job file may list the forms or give them comma-separated.
    path = tmp_path / "job.yaml"
    path.write_text("input: in\noutput: out\nmodel: unet\nexports: [cvat-masks]\n")
    assert JobConfig.from_yaml(path).exports == ("cvat-masks",)
    path.write_text("input: in\noutput: out\nmodel: unet\nexports: label-studio, coco\n")
    assert JobConfig.from_yaml(path).exports == ("label-studio", "coco")


def test_label_issues_order_worst_label_first_unless_an_order_is_given():
    settings = ExportSettings(only="label-issues")
    assert settings.label_studio().order == "label-quality"
    assert ExportSettings(only="label-issues", order="least-confident").label_studio().order == "least-confident"
    assert ExportSettings().label_studio().order == "image-id"
    with pytest.raises(JobError, match=r"only 'typos' is not one of \['label-issues'\]"):
        ExportSettings(only="typos")


def test_stale_forms_are_those_written_with_other_options_or_not_at_all():
    settings = ExportSettings(limit=3)
    job = {
        "coco_export": settings.options_of("coco"),
        "exports": {"label-studio": {"options": {**settings.options_of("label-studio"), "limit": None}}},
    }
    assert stale_forms(job, ["coco", "label-studio", "cvat-masks"], settings) == ["label-studio", "cvat-masks"]


# ---------------------------------------------------------------- selection on a hand-made images.parquet

# image_id, width (None: undecodable), confidence, label_quality, label_issue_share
ROWS = [
    (1, 10, 0.9, 0.8, 0.0),
    (2, 10, 0.5, 0.2, 0.3),
    (4, None, None, None, None),
    (5, 10, 0.7, None, None),  # no label
    (7, 10, 0.6, 0.2, 0.1),  # ties with 2 on label quality: image_id decides
    (9, 10, None, 0.5, 0.05),
]


def _images(tmp_path, rows=ROWS, drop=()) -> OutDir:
    table = pa.Table.from_pylist(
        [
            {
                "image_id": i,
                "file_name": f"{i}.jpg",
                "uri": f"/x/{i}.jpg",
                "width": w,
                "height": w,
                "status": "ok",
                "labeled": q is not None,
                "num_masks": 0,
                "confidence": c,
                "label_quality": q,
                "label_issue_share": s,
            }
            for i, w, c, q, s in rows
        ],
        schema=IMAGES_SCHEMA,
    )
    for name in drop:
        table = table.drop_columns([name])
    pq.write_table(table, tmp_path / "images.parquet")
    return OutDir.open(str(tmp_path))


@pytest.mark.parametrize(
    ("order", "limit", "only", "ids"),
    [
        (None, None, None, [1, 2, 5, 7, 9]),
        ("least-confident", None, None, [2, 7, 5, 1, 9]),
        ("most-confident", 2, None, [1, 5]),
        ("label-quality", None, None, [2, 7, 9, 1, 5]),
        (None, None, "label-issues", [2, 7, 9]),
        ("least-confident", None, "label-issues", [2, 7, 9]),
        ("image-id", 2, "label-issues", [2, 7]),
        ("most-confident", None, "label-issues", [7, 2, 9]),
    ],
)
def test_selection_orders_subsets_and_cuts(tmp_path, order, limit, only, ids):
    assert select_images(_images(tmp_path), order, limit, only).tolist() == ids


def test_label_issues_and_label_quality_need_a_label_quality_run(tmp_path):
    unlabeled = [(i, w, c, None, None) for i, w, c, _, _ in ROWS]
    out = _images(tmp_path, unlabeled)
    with pytest.raises(JobError, match=r"only 'label-issues' needs the label_issue_share column .*--labels"):
        select_images(out, only="label-issues")
    with pytest.raises(JobError, match=r"valid orders for it: \['image-id', 'least-confident', 'most-confident'\]"):
        select_images(out, "label-quality")
    old = _images(tmp_path, drop=("label_quality", "label_issue_share", "confidence"))  # an older segbatch's run
    with pytest.raises(JobError, match=r"order 'least-confident' needs the confidence column.*\['image-id'\]"):
        select_images(old, "least-confident")


# ---------------------------------------------------------------- segbatch export: flags and errors


@pytest.fixture()
def finished(tmp_path):
    run = make_run(tmp_path, "semantic").path
    job = json.loads((run / "job.json").read_text())
    job["config"] = JobConfig(input=job["config"]["input"], output=str(run), model="segnet").public_dict()
    (run / "job.json").write_text(json.dumps(job))
    (run / "_SUCCESS").write_bytes(b"")
    return run


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--format", "coco,yolo"], "--format: 'yolo' is not an export form; valid: ['coco', 'label-studio', "),
        (["--format", ","], "--format names no export form"),
        (["--only", "bad-labels"], "only 'bad-labels' is not one of ['label-issues']"),
        (["--format", "label-studio", "--order", "random"], "order 'random' is not one of"),
        (["--format", "label-studio", "--limit", "0"], "export_limit must be an integer >= 1, got 0"),
        (["--format", "label-studio", "--image-root", "ftp://h/x"], "image root 'ftp://h/x' is not a URL"),
        (["--only", "label-issues"], "only 'label-issues' needs the label_issue_share column"),
    ],
)
def test_export_exits_2_naming_the_bad_value(finished, capsys, flags, message):
    assert main(["export", str(finished), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_export_writes_the_forms_named_and_records_them(finished, capsys):
    before = (finished / "predictions.coco.json").read_bytes()
    assert (
        main(
            [
                "export",
                str(finished),
                "--format",
                "label-studio,cvat-masks",
                "--order",
                "most-confident",
                "--limit",
                "2",
                "--min-mask-area",
                "1",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("wrote 2 Label Studio tasks") and "CVAT's Segmentation mask 1.1" in lines[1]
    tasks = json.loads((finished / "label-studio" / "tasks.json").read_text())
    assert [t["data"]["image_id"] for t in tasks] == [8, 3]  # the two most confident
    assert (finished / "cvat-masks.zip").stat().st_size > 0
    assert (finished / "predictions.coco.json").read_bytes() == before  # coco was not asked for
    job = json.loads((finished / "job.json").read_text())
    assert job["exports"]["label-studio"]["options"]["order"] == "most-confident"
    assert job["exports"]["label-studio"]["counts"]["tasks"] == 2
    assert job["exports"]["cvat-masks"]["options"] == {"classes": None, "min_area": 1}
    assert "coco_export" not in job
