"""The CLI: `segbatch models`, and job-level errors that exit 2 before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segbatch.cli import main
from segbatch.errors import JobError
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def test_models_lists_every_model_with_task_input_and_categories(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in (
        "fcn_resnet50",
        "fcn_resnet101",
        "deeplabv3_resnet50",
        "deeplabv3_resnet101",
        "deeplabv3_mobilenet_v3_large",
        "lraspp_mobilenet_v3_large",
        "maskrcnn_resnet50_fpn",
        "maskrcnn_resnet50_fpn_v2",
        "unet",
    ):
        assert name in out
    assert "shorter side 520" in out and "aeroplane" in out and "(21 in all)" in out
    assert "instance" in out and "person" in out and "(81 in all)" in out and "shorter side 800" in out
    assert "background, circle, square, triangle" in out


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    from segbatch.sample import write_sample_dataset

    write_sample_dataset(str(tmp_path / "data"), 2, seed=3)
    return tmp_path / "data" / "images"


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(["run", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{tmp}/missing", "--model", "unet"], "input '{tmp}/missing' does not exist"),
        (["--input", "{tmp}/empty", "--model", "unet"], "holds no images with extensions"),
        (["--input", "{images}", "--model", "segformer"], "unknown model 'segformer'; valid models: "),
        (
            ["--input", "{images}", "--model", "unet", "--weights", "{tmp}/nope.pt"],
            "weights file '{tmp}/nope.pt' does not exist; valid values: DEFAULT, none, or a checkpoint path/URL",
        ),
        (["--input", "{images}", "--model", "unet", "--weights", "{tmp}/garbage.pt"], "cannot load weights"),
        (["--input", "{images}", "--model", "unet", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (
            ["--input", "{images}", "--model", "unet", "--labels", "{tmp}/nolabels"],
            "labels '{tmp}/nolabels' do not exist",
        ),
        (
            ["--input", "{images}", "--model", "unet", "--output", "memory://runs/out"],
            "output 'memory://runs/out' is on fsspec's in-process memory filesystem, which Ray workers",
        ),
        (
            ["--input", "http://127.0.0.1:9/photos", "--model", "unet"],
            "input 'http://127.0.0.1:9/photos' is an http(s) URL",
        ),
    ],
)
def test_job_level_problems_exit_2_naming_the_bad_value(tmp_path, images, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 64)
    fmt = {"tmp": str(tmp_path), "images": str(images)}
    output = [] if "--output" in args else ["--output", str(tmp_path / "out")]
    code, err = run_cli([a.format(**fmt) for a in args] + output, capsys)
    assert code == 2
    assert message.format(**fmt) in err
    assert not (tmp_path / "out").exists()  # failed before any work


def test_an_output_with_foreign_files_is_refused(tmp_path, images, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.docx").write_text("precious")
    code, err = run_cli(["--input", str(images), "--model", "unet", "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "is not empty and holds no segbatch job (found thesis.docx)" in err


def test_config_file_and_flags(tmp_path, images, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps({"input": str(images), "model": "unet", "output": str(tmp_path / "o"), "batchsize": 3}))
    code, err = run_cli(["--config", str(cfg)], capsys)
    assert code == 2 and "unknown config key 'batchsize'" in err


def test_the_installed_command_exits_2_for_a_bad_model(tmp_path, images):
    """The real process exit status, through the console script."""
    exe = Path(sys.executable).parent / "segbatch"
    proc = subprocess.run(
        [str(exe), "run", "--input", str(images), "--output", str(tmp_path / "o"), "--model", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "segbatch: error: unknown model 'nope'" in proc.stderr


def test_no_channels_last_flag_reaches_the_config():
    from segbatch.cli import build_parser, config_from_args

    base = ["run", "--input", "in", "--output", "out", "--model", "unet"]
    assert config_from_args(build_parser().parse_args(base)).channels_last is True
    assert config_from_args(build_parser().parse_args([*base, "--no-channels-last"])).channels_last is False


def test_no_fold_batchnorm_flag_reaches_the_config():
    from segbatch.cli import build_parser, config_from_args

    base = ["run", "--input", "in", "--output", "out", "--model", "unet"]
    assert config_from_args(build_parser().parse_args(base)).fold_batchnorm is True
    assert config_from_args(build_parser().parse_args([*base, "--no-fold-batchnorm"])).fold_batchnorm is False


def test_calls_per_actor_reaches_the_config():
    from segbatch.cli import build_parser, config_from_args

    base = ["run", "--input", "in", "--output", "out", "--model", "unet"]
    assert config_from_args(build_parser().parse_args(base)).calls_per_actor is None  # 2 on a GPU, 1 on a CPU
    assert config_from_args(build_parser().parse_args([*base, "--calls-per-actor", "3"])).calls_per_actor == 3


@pytest.mark.parametrize("command", ["run", "audit", "metrics", "export"])
def test_storage_options_that_are_not_json_exit_2_with_one_line(tmp_path, command, capsys):
    args = [command, "--storage-options", "not json"]
    args += ["--input", "in", "--output", "out", "--model", "unet"] if command == "run" else [str(tmp_path)]
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "argument --storage-options: must be a JSON object: Expecting value" in err
    assert "Traceback" not in err


def test_audit_export_and_metrics_of_an_unfinished_run_exit_2_saying_how_to_finish_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "job.json").write_text(json.dumps({"status": "running"}))
    for command in ("audit", "export", "metrics"):
        assert main([command, str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"{str(run_dir)!r} holds a run that has not finished (_SUCCESS is missing)" in err
        assert f"then {command} it" in err


def test_an_output_inside_the_input_is_refused(tmp_path, images, capsys):
    code, err = run_cli(["--input", str(images), "--model", "unet", "--output", str(images / "run1")], capsys)
    assert code == 2 and f"output {str(images / 'run1')!r} lies inside the input" in err
    assert not (images / "run1").exists()


def test_object_storage_without_credentials_or_endpoint_exits_2_naming_the_url_and_the_fix(
    tmp_path, images, capsys, monkeypatch
):
    """No server is needed for either failure: botocore finds no credentials, or nothing listens."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, err = run_cli(
        ["--input", "s3://no-bucket/photos", "--model", "unet", "--output", str(tmp_path / "o")], capsys
    )
    assert code == 2, err
    assert "cannot access input 's3://no-bucket/photos': no credentials found" in err
    assert "AWS_ACCESS_KEY_ID" in err and "--storage-options" in err and "Traceback" not in err

    port = free_port()  # nothing listens there
    options = json.dumps({"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
                          "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}})  # fmt: skip
    code, err = run_cli(
        ["--input", "s3://b/photos", "--model", "unet", "--output", str(tmp_path / "o"), "--storage-options", options],
        capsys,
    )
    assert code == 2, err
    assert "cannot reach input 's3://b/photos'" in err and "endpoint" in err and "Traceback" not in err


def test_high_bit_depth_reaches_the_config_and_bad_values_are_named():
    from segbatch.cli import build_parser, config_from_args

    base = ["run", "--input", "in", "--output", "out", "--model", "unet"]
    assert config_from_args(build_parser().parse_args(base)).high_bit_depth == "range"
    assert config_from_args(build_parser().parse_args([*base, "--high-bit-depth", "full"])).high_bit_depth == "full"
    with pytest.raises(JobError, match="high_bit_depth must be one of range, percentile, full, got 'log'"):
        config_from_args(build_parser().parse_args([*base, "--high-bit-depth", "log"]))


def test_tile_flags_reach_the_config_and_bad_values_are_named():
    from segbatch.cli import build_parser, config_from_args
    from segbatch.stages.tiling import TileSpec

    base = ["run", "--input", "in", "--output", "out", "--model", "unet"]
    flags = ["--tile", "768x1024", "--tile-overlap", "0.25", "--tile-scale", "0.5", "--tile-blend", "gaussian"]
    config = config_from_args(build_parser().parse_args([*base, *flags, "--max-image-pixels", "0"]))
    assert config.tile_spec() == TileSpec((768, 1024), 0.25, 0.5, "gaussian") and config.max_image_pixels == 0
    merge = ["--tile", "800", "--tile-merge", "nms", "--tile-merge-threshold", "0.7"]
    config = config_from_args(build_parser().parse_args([*base, *merge]))
    assert (config.tile_merge, config.tile_merge_threshold, config.tile_spec().overlap) == ("nms", 0.7, 0)
    with pytest.raises(JobError, match=r"tile overlap must be pixels \(e.g. 256\) or a fraction .*got '256px'"):
        config_from_args(build_parser().parse_args([*base, "--tile", "1024", "--tile-overlap", "256px"]))
    with pytest.raises(JobError, match=r"tile_overlap '64' was given without tile"):
        config_from_args(build_parser().parse_args([*base, "--tile-overlap", "64"]))
