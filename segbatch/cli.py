"""``segbatch`` commands → :class:`JobConfig` → :func:`segbatch.pipeline.run`.

    segbatch run --input DIR --output DIR --model NAME [--weights DEFAULT|PATH|none] ...
    segbatch models
    segbatch demo [--output DIR]
    segbatch sample OUT_DIR [--n N]

Job-level problems exit with status 2 and a message naming the bad value.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import resources
from typing import Any

from segbatch.config import JobConfig, parse_storage_options
from segbatch.errors import JobError

log = logging.getLogger("segbatch")

# (flag, config key, type, help) of every option `run` shares with job YAML files.
_RUN_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--input", "input", str, "folder or prefix of images (local path or fsspec URL)"),
    ("--output", "output", str, "output folder or prefix (one run = one output)"),
    ("--model", "model", str, "model name (see `segbatch models`)"),
    ("--weights", "weights", str, "DEFAULT, none, or a checkpoint path/URL (default: DEFAULT)"),
    ("--labels", "labels", str, "folder of mask PNGs or a COCO JSON file, for Dice"),
    ("--label-map", "label_map", str, "YAML/JSON: names of mask-PNG ids and model→label category matches"),
    ("--missing-labels", "missing_labels", str, "a missing label is an 'error' row (default) or 'ignore'd"),
    ("--batch-size", "batch_size", int, "images per model batch (default 8)"),
    ("--actors", "actors", int, "model actors, one model each (default 1)"),
    ("--gpus-per-actor", "gpus_per_actor", float, "GPUs per actor; fractions pack actors (default: 1 if the cluster has GPUs, else 0)"),
    ("--cpus-per-actor", "cpus_per_actor", float, "CPUs per actor, also its torch threads (default 1)"),
    ("--score-threshold", "score_threshold", float, "instance models: minimum detection score (default 0.5)"),
    ("--mask-threshold", "mask_threshold", float, "instance models: mask probability threshold (default 0.5)"),
    ("--min-size", "min_size", int, "instance models: shorter side the model resizes to (default: the model's)"),
    ("--precision", "precision", str, "fp32 (default), fp16 or bf16 autocast on GPU"),
    ("--rows-per-part", "rows_per_part", int, "images per committed part file (default 64)"),
    ("--ray-address", "ray_address", str, "Ray cluster address (default: RAY_ADDRESS or a local cluster)"),
    ("--storage-options", "storage_options", parse_storage_options, "fsspec options as JSON, e.g. '{\"anon\": true}'"),
]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="job YAML file with the same keys; flags given here win")
    for flag, dest, typ, help_text in _RUN_OPTIONS:
        p.add_argument(flag, dest=dest, type=typ, default=argparse.SUPPRESS, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segbatch", description="Batch dataset labeling with segmentation models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_options(sub.add_parser("run", help="run a labeling job"))
    sub.add_parser("models", help="list the models with task, categories and input size")
    demo = sub.add_parser("demo", help="label the bundled sample images with the bundled U-Net")
    demo.add_argument("--output", default="demo-output")
    demo.add_argument("--ray-address", default=None)
    sample = sub.add_parser("sample", help="write generated shape images and mask PNGs")
    sample.add_argument("out_dir")
    sample.add_argument("--n", type=int, default=32)
    sample.add_argument("--seed", type=int, default=0)
    return parser


def config_from_args(args: argparse.Namespace) -> JobConfig:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    if args.config:
        return JobConfig.from_yaml(args.config, overrides=values)
    return JobConfig.from_mapping(values)


def _print_models() -> None:
    from segbatch.categories import PLACEHOLDER
    from segbatch.models.registry import list_models

    rows = []
    for spec in list_models():
        cats = [c for c in spec.categories if c != PLACEHOLDER]
        shown = ", ".join(cats[:6]) + (f", … ({len(cats)} in all)" if len(cats) > 6 else "")
        rows.append((spec.name, spec.task, spec.preprocess.describe(), shown, spec.description))
    width = max(len(r[0]) for r in rows)
    print(f"{'model':<{width}}  {'task':<8}  {'input':<16}  categories")
    for name, task, size, cats, desc in rows:
        print(f"{name:<{width}}  {task:<8}  {size:<16}  {cats}")
        print(f"{'':<{width}}  {desc}")


def demo_config(output: str, ray_address: str | None = None) -> JobConfig:
    """The embedded default: bundled sample images and masks, bundled U-Net."""
    root = resources.files("segbatch") / "data" / "sample"
    return JobConfig(input=str(root / "images"), labels=str(root / "masks"), output=output,
                     model="unet", weights="DEFAULT", ray_address=ray_address)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("segbatch").setLevel(logging.INFO)
    try:
        if args.command == "models":
            _print_models()
            return 0
        if args.command == "sample":
            from segbatch.sample import write_sample_dataset

            write_sample_dataset(args.out_dir, args.n, seed=args.seed)
            print(f"wrote {args.n} images to {args.out_dir}/images and masks to {args.out_dir}/masks")
            return 0
        config = demo_config(args.output, args.ray_address) if args.command == "demo" else config_from_args(args)
        from segbatch.pipeline import run

        summary = run(config)
    except JobError as err:
        print(f"segbatch: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
