"""config.py: validation that names bad values, YAML with overrides, secrets kept out."""

from __future__ import annotations

import pytest

from segbatch.config import JobConfig, parse_storage_options, redact_url
from segbatch.errors import JobError

BASE = {"input": "in", "output": "out", "model": "unet"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
        ("actors", 1.5, "actors must be an integer >= 1, got 1.5"),
        ("gpus_per_actor", -1, "gpus_per_actor must be a number >= 0, got -1"),
        ("score_threshold", 1.5, r"score_threshold must be a number in \[0, 1\], got 1.5"),
        ("precision", "fp8", "precision must be one of fp32, fp16, bf16, got 'fp8'"),
        ("channels_last", "yes", "channels_last must be true or false, got 'yes'"),
        ("fold_batchnorm", 1, "fold_batchnorm must be true or false, got 1"),
        ("calls_per_actor", 0, "calls_per_actor must be an integer >= 1, got 0"),
        ("missing_labels", "skip", "missing_labels must be 'error' or 'ignore', got 'skip'"),
        ("input", "", "input must be a non-empty string"),
    ],
)
def test_bad_values_are_named(field, value, message):
    with pytest.raises(JobError, match=message):
        JobConfig(**{**BASE, field: value})


def test_unknown_and_missing_keys():
    with pytest.raises(JobError, match=r"unknown config key 'batchsize'; valid keys: .*batch_size"):
        JobConfig.from_mapping({**BASE, "batchsize": 4})
    with pytest.raises(JobError, match=r"missing required config value.*model"):
        JobConfig.from_mapping({"input": "a", "output": "b"})


def test_yaml_with_cli_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: data\noutput: out\nmodel: unet\nbatch-size: 4\nextensions: [JPG]\n")
    cfg = JobConfig.from_yaml(path, overrides={"batch_size": 16, "actors": 2})
    assert (cfg.input, cfg.batch_size, cfg.actors, cfg.extensions) == ("data", 16, 2, (".jpg",))
    with pytest.raises(JobError, match="cannot read config file"):
        JobConfig.from_yaml(tmp_path / "nope.yaml")
    path.write_text("- a list\n")
    with pytest.raises(JobError, match="must hold a mapping"):
        JobConfig.from_yaml(path)


def test_public_dict_has_no_secrets():
    cfg = JobConfig(
        input="s3://KEY:SECRET@bucket/in",
        output="https://h/o?sig=TOKEN",
        model="unet",
        storage_options={"key": "AKIA", "secret": "s3cr3t"},
    )
    text = repr(cfg.public_dict())
    for secret in ("SECRET", "TOKEN", "AKIA", "s3cr3t"):
        assert secret not in text
    assert cfg.public_dict()["storage_options"] == ["key", "secret"]
    assert redact_url("s3://bucket/key") == "s3://bucket/key"
    assert redact_url("/local/path") == "/local/path"


def test_storage_options_json():
    assert parse_storage_options('{"anon": true}') == {"anon": True}
    with pytest.raises(JobError, match="JSON object"):
        parse_storage_options("[1]")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tile": "big"}, r"tile size must be SIZE or HEIGHTxWIDTH in pixels .*got 'big'"),
        ({"tile": "0"}, r"tile size must be .*got '0'"),
        ({"tile": True}, r"tile must be SIZE or HEIGHTxWIDTH .*got True"),
        ({"tile": "256", "tile_overlap": "256"}, r"tile overlap 256 px must be >= 0 and smaller than the tile 256x256"),
        ({"tile": "256", "tile_overlap": "1.5"}, r"tile overlap must be pixels .* or a fraction in \[0, 1\).*'1.5'"),
        ({"tile": "256", "tile_scale": 0}, r"tile scale must be a finite number > 0, got 0"),
        ({"tile": "256", "tile_scale": "x"}, r"tile_scale must be a number > 0, got 'x'"),
        ({"tile": "256", "tile_blend": "max"}, r"unknown tile blend 'max'; valid: mean, gaussian"),
        ({"tile_merge": "union"}, r"tile_merge must be one of nms, merge, got 'union'"),
        ({"tile_merge_threshold": 0}, r"tile_merge_threshold must be a number in \(0, 1\], got 0"),
        ({"tile_overlap": 64}, r"tile_overlap 64 was given without tile \(e.g. --tile 1024\)"),
        ({"tile_blend": "gaussian"}, r"tile_blend 'gaussian' was given without tile"),
        ({"max_image_pixels": -1}, r"max_image_pixels must be an integer >= 0, got -1"),
    ],
)
def test_bad_tile_options_are_named(values, message):
    with pytest.raises(JobError, match=message):
        JobConfig(**{**BASE, **values})


def test_tile_options_from_flags_and_yaml_give_one_spec():
    from segbatch.stages.tiling import TileSpec

    flags = JobConfig(**BASE, tile="768x1024", tile_overlap="0.25", tile_scale=0.5, tile_blend="gaussian")
    yaml_values = JobConfig.from_mapping({**BASE, "tile": "768x1024", "tile-overlap": 0.25, "tile-scale": 0.5,
                                          "tile-blend": "gaussian"})  # fmt: skip
    assert flags.tile_spec() == yaml_values.tile_spec() == TileSpec((768, 1024), 0.25, 0.5, "gaussian")
    assert JobConfig(**BASE, tile=512, tile_overlap=128).tile_spec() == TileSpec((512, 512), 128)
    assert JobConfig(**BASE).tile_spec() is None
