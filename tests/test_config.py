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
