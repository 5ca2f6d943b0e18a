"""``segbatch`` commands → :class:`JobConfig` → :func:`segbatch.pipeline.run`.

    segbatch run --input DIR --output DIR --model NAME [--weights DEFAULT|PATH|none] ...
    segbatch models
    segbatch demo [--output DIR]
    segbatch sample OUT_DIR [--n N]
    segbatch audit|metrics RUN_DIR
    segbatch export RUN_DIR [--format coco,label-studio,cvat-masks] [--only label-issues] [--order …] [--limit N]

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


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _storage_options(text: str) -> dict[str, Any]:
    """``--storage-options`` for argparse: a bad value is a usage error (exit 2, one line), not a traceback."""
    try:
        return parse_storage_options(text)
    except JobError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--storage-options ")) from None


# (flag, config key, type, help) of every option `run` shares with job YAML files.
_RUN_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--input", "input", str, "folder or prefix of images (local path or fsspec URL)"),
    ("--output", "output", str, "output folder or prefix (one run = one output)"),
    (
        "--model",
        "model",
        str,
        "a model name (see `segbatch models`), hf:HUB_ID_OR_FOLDER, smp:FOLDER_OR_HUB_ID, export:FILE.pt2, "
        "or module:function",
    ),
    ("--task", "task", str, "semantic or instance: for hf: universal models (Mask2Former, MaskFormer)"),
    ("--model-card", "model_card", str, "YAML/JSON: task, categories, preprocessing, output (export: needs one)"),
    ("--model-revision", "model_revision", str, "hf:/smp: hub ids: the branch, tag or commit to use"),
    ("--weights", "weights", str, "DEFAULT, none, or a checkpoint path/URL (default: DEFAULT)"),
    ("--labels", "labels", str, "folder of mask PNGs or a COCO JSON file, for Dice"),
    ("--label-map", "label_map", str, "YAML/JSON: names of mask-PNG ids and model→label category matches"),
    ("--missing-labels", "missing_labels", str, "a missing label is an 'error' row (default) or 'ignore'd"),
    ("--batch-size", "batch_size", int, "images per model batch (default: 32 on a GPU, 8 on a CPU)"),
    (
        "--actors",
        "actors",
        int,
        "model actors, one model each (default: one per GPU; without GPUs one per 4 CPUs of a node, "
        "at least one, at most one per GiB of its memory)",
    ),
    (
        "--gpus-per-actor",
        "gpus_per_actor",
        float,
        "GPUs per actor; fractions pack actors (default: 1 if the cluster has GPUs, else 0)",
    ),
    (
        "--cpus-per-actor",
        "cpus_per_actor",
        float,
        "CPUs reserved per actor, also its torch threads (default: 1 beside a GPU; without GPUs "
        "its torch threads less 0.5, at least 0.5)",
    ),
    (
        "--torch-threads",
        "torch_threads",
        int,
        "torch threads per actor (default: --cpus-per-actor when given; else 1 beside a GPU, and "
        "without GPUs the node's CPUs per actor, at most 4)",
    ),
    ("--task-cpus", "task_cpus", float, "CPUs reserved per read / encode task (default 0.25)"),
    (
        "--quality-stride",
        "quality_stride",
        int,
        "label quality: class probabilities at every Nth pixel of each axis (default 4; 1: all; 0: off)",
    ),
    (
        "--stall-timeout",
        "stall_timeout",
        float,
        "stop a run that commits nothing this many seconds while a resource it needs is missing "
        "(default 600; 0: never)",
    ),
    (
        "--calls-per-actor",
        "calls_per_actor",
        int,
        "batches an actor takes in at once; the model runs one at a time (default: 2 on a GPU, 1 on a CPU)",
    ),
    ("--score-threshold", "score_threshold", float, "instance models: minimum detection score (default 0.5)"),
    ("--mask-threshold", "mask_threshold", float, "instance models: mask probability threshold (default 0.5)"),
    ("--min-size", "min_size", int, "instance models: shorter side the model resizes to (default: the model's)"),
    ("--precision", "precision", str, "fp32 (default), fp16 or bf16 autocast on GPU"),
    (
        "--high-bit-depth",
        "high_bit_depth",
        str,
        "16-bit grayscale to 8 bits: range (default: the image's own min..max), percentile (ImageJ's auto "
        "contrast) or full (÷257)",
    ),
    (
        "--decode",
        "decode",
        str,
        "where JPEGs are decoded and resized: host (read tasks), device (the model actor, its GPU if it "
        "has one; encoded bytes travel) or auto (default: device)",
    ),
    (
        "--max-image-pixels",
        "max_image_pixels",
        int,
        "images with more pixels are error rows (default: Pillow's limit, 89478485; 0: no limit)",
    ),
    ("--tile", "tile", str, "large images: run in windows of SIZE or HEIGHTxWIDTH image pixels (e.g. 1024)"),
    ("--tile-overlap", "tile_overlap", str, "pixels (e.g. 256) or a fraction of the tile (e.g. 0.25) (default 0)"),
    ("--tile-scale", "tile_scale", float, "the model sees a window resized by this factor (default 1.0: native)"),
    ("--tile-blend", "tile_blend", str, "semantic: mean (default) or gaussian weights of overlapping tiles"),
    ("--tile-merge", "tile_merge", str, "instance: merge (default) or nms of detections across tile borders"),
    ("--tile-merge-threshold", "tile_merge_threshold", float, "instance: mask match threshold (default 0.5)"),
    (
        "--tile-strips",
        "tile_strips",
        int,
        "split each image into N strips of tile rows that run on different model actors (default: sized "
        "from the actors and images; 1: whole images)",
    ),
    (
        "--rows-per-part",
        "rows_per_part",
        int,
        "images per committed part file (default: 8 to 64 by the size of the run)",
    ),
    ("--ray-address", "ray_address", str, "Ray cluster address (default: RAY_ADDRESS or a local cluster)"),
    ("--storage-options", "storage_options", _storage_options, "fsspec options as JSON, e.g. '{\"anon\": true}'"),
]

# Options of the COCO exports, shared by `run` and `export`.
_EXPORT_OPTIONS: list[tuple[str, str, Any, str]] = [
    (
        "--coco-segmentation",
        "coco_segmentation",
        str,
        "rle (default; iscrowd=1, imports into CVAT as masks) or polygon",
    ),
    (
        "--polygon-tolerance",
        "polygon_tolerance",
        float,
        "polygon simplification: max outline error in pixels (default 1.0)",
    ),
    ("--min-mask-area", "min_mask_area", int, "leave out masks with fewer pixels (default 0)"),
    ("--export-classes", "export_classes", _csv, "comma-separated model categories to export (default: all)"),
    (
        "--coco-category-ids",
        "coco_category_ids",
        str,
        "a COCO JSON (e.g. your labels) whose category ids the export uses",
    ),
]


# Options of the Label Studio tasks, shared by `run` and `export`.
_LABEL_STUDIO_OPTIONS: list[tuple[str, str, Any, str]] = [
    (
        "--order",
        "export_order",
        str,
        "Label Studio tasks: image-id (default), least-confident, most-confident or label-quality (worst first)",
    ),
    ("--limit", "export_limit", int, "Label Studio tasks: keep the first N of that order (default: all)"),
    (
        "--image-root",
        "image_root",
        str,
        "Label Studio tasks: URL that replaces the input folder in image URLs (s3://…, https://…, "
        "/data/local-files/?d=…); default: cloud URLs kept, a local folder as a local-files URL",
    ),
]


# Switches of `run`: flag, JobConfig field, store_true / store_false, help.
_SWITCHES: list[tuple[str, str, str, str]] = [
    (
        "--no-channels-last",
        "channels_last",
        "store_false",
        "run the model in torchvision's default tensor layout (NCHW), not channels-last "
        "(channels-last applies on the CPU and under GPU fp16/bf16)",
    ),
    (
        "--no-fold-batchnorm",
        "fold_batchnorm",
        "store_false",
        "keep BatchNorm as its own operator instead of folding it into the convolution before it",
    ),
    (
        "--tile-full-pass",
        "tile_full_pass",
        "store_true",
        "instance models, tiled: also detect on the whole image (objects larger than a tile)",
    ),
    ("--verbose", "verbose", "store_true", "show Ray Data's own per-operator progress lines too"),
    ("--no-report", "report", "store_false", "do not write report.html at the end of the run"),
]


def _add_options(p: argparse.ArgumentParser, options: list[tuple[str, str, Any, str]]) -> None:
    for flag, dest, typ, help_text in options:
        p.add_argument(flag, dest=dest, type=typ, default=argparse.SUPPRESS, help=help_text)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="job YAML file with the same keys; flags given here win")
    _add_options(p, _RUN_OPTIONS + _EXPORT_OPTIONS + _LABEL_STUDIO_OPTIONS)
    p.add_argument(
        "--export",
        dest="exports",
        type=_csv,
        default=argparse.SUPPRESS,
        help="extra forms written after the run, comma-separated: label-studio, cvat-masks (COCO is always written)",
    )
    for flag, dest, action, help_text in _SWITCHES:
        p.add_argument(flag, dest=dest, action=action, default=argparse.SUPPRESS, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segbatch", description="Batch dataset labeling with segmentation models on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_options(sub.add_parser("run", help="run a labeling job"))
    sub.add_parser("models", help="list the models with task, categories and input size")
    demo = sub.add_parser("demo", help="label the bundled sample images with the bundled U-Net")
    demo.add_argument("--output", default="demo-output")
    demo.add_argument("--ray-address", default=None)
    audit = sub.add_parser("audit", help="write report.html for a finished run (no model run)")
    audit.add_argument("run_dir")
    audit.add_argument("--worst", type=int, default=12, help="images shown per ranking (default 12)")
    audit.add_argument(
        "--rank",
        default=None,
        help="order of the image panels: label-quality | dice | confidence (default: label-quality where the "
        "run has it, else dice with labels, else confidence)",
    )
    audit.add_argument("--classes", type=_csv, default=None, help="comma-separated evaluation classes to audit")
    audit.add_argument("--max-dice", type=float, default=None, help="only images whose Dice is at most this")
    audit.add_argument(
        "--sample",
        type=int,
        default=None,
        help="audit a random sample of N images (labeled ones if the run has labels)",
    )
    audit.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    audit.add_argument("--storage-options", type=_storage_options, default={})
    metrics = sub.add_parser("metrics", help="recompute metrics.json from a finished run's Parquet and print it")
    metrics.add_argument("run_dir")
    metrics.add_argument("--storage-options", type=_storage_options, default={})
    export = sub.add_parser("export", help="write a finished run's export forms again, with other options")
    export.add_argument("run_dir")
    export.add_argument(
        "--format",
        dest="forms",
        type=_csv,
        default=("coco",),
        help="comma-separated forms: coco (default), label-studio, cvat-masks",
    )
    export.add_argument(
        "--only",
        default=None,
        help="label-issues: only images whose label a label-quality run flagged (ordered worst label first)",
    )
    _add_options(export, _EXPORT_OPTIONS + _LABEL_STUDIO_OPTIONS)
    export.add_argument("--storage-options", dest="storage_options", type=_storage_options, default={})
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
    from segbatch.models.plugins import model_listing

    rows = []
    for row in model_listing():  # built-ins, installed plugins (not loaded), adapters
        cats = [c for c in row["categories"] if c != PLACEHOLDER]
        shown = ", ".join(cats[:6]) + (f", … ({len(cats)} in all)" if len(cats) > 6 else "")
        rows.append((row["name"], row["kind"], row["task"], row["input"], shown, row["description"]))
    width = max(len(r[0]) for r in rows)
    print(f"{'model':<{width}}  {'kind':<8}  {'task':<18}  {'input':<16}  categories")
    for name, kind, task, size, shown, desc in rows:
        print(f"{name:<{width}}  {kind:<8}  {task:<18}  {size:<16}  {shown}")
        print(f"{'':<{width}}  {desc}")


def demo_config(output: str, ray_address: str | None = None) -> JobConfig:
    """The embedded default: bundled sample images and masks, bundled U-Net."""
    root = resources.files("segbatch") / "data" / "sample"
    return JobConfig(
        input=str(root / "images"),
        labels=str(root / "masks"),
        output=output,
        model="unet",
        weights="DEFAULT",
        ray_address=ray_address,
    )


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
        if args.command in ("audit", "metrics", "export"):
            return _offline(args)
        summary = _run(args)
    except JobError as err:
        print(f"segbatch: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0


def _run(args: argparse.Namespace) -> Any:
    """A run as the console shows it: Ray's harmless noise filtered, and one Ctrl-C stopping it
    cleanly from the first moment (the handlers go in before torch and Ray are imported)."""
    from segbatch.driver.console import StderrFilter
    from segbatch.driver.interrupt import GracefulStop

    configs: list[JobConfig] = []
    with StderrFilter(), GracefulStop(lambda: _committed_line(configs), resume=_RESUME):
        configs.append(demo_config(args.output, args.ray_address) if args.command == "demo" else config_from_args(args))
        from segbatch.pipeline import run

        return run(configs[0])


_RESUME = "rerun the same command to resume: committed images are skipped, the rest are labeled"


def _committed_line(configs: list[JobConfig]) -> str:
    """How many images are committed in the run's output (for the interrupt message)."""
    from segbatch.outputs.folder import MANIFEST, PARTS, OutDir

    if not configs:
        return "nothing is committed yet"
    config = configs[0]
    out = OutDir.open(config.output, config.storage_options)
    done = len(out.committed_ids())
    total = out.read_table(MANIFEST).num_rows if out.exists(MANIFEST) else None
    of = f" of {total}" if total is not None else ""
    return f"{done}{of} images are committed in {out.url_of(PARTS)}"


def _offline(args: argparse.Namespace) -> int:
    """``audit`` / ``metrics`` / ``export``: work on a finished run's files, no Ray, no model."""
    import json

    from segbatch.io.fs import storage_errors
    from segbatch.outputs.folder import JOB, SUCCESS, OutDir

    out = OutDir.open(args.run_dir, args.storage_options)
    with storage_errors(args.run_dir, "run"):
        if not out.exists(JOB):
            raise JobError(f"{args.run_dir!r} is not a segbatch run ({JOB} is missing)")
        if not out.exists(SUCCESS):
            raise JobError(
                f"{args.run_dir!r} holds a run that has not finished ({SUCCESS} is missing): rerun its "
                f"`segbatch run` command to complete it (committed images are kept), then {args.command} it"
            )
    if args.command == "metrics":
        from segbatch.outputs.run_metrics import recompute_metrics

        print(json.dumps(recompute_metrics(out), indent=2))
        return 0
    if args.command == "audit":
        from segbatch.audit.report import AuditOptions, write_report

        options = AuditOptions(
            worst=args.worst,
            classes=args.classes,
            max_dice=args.max_dice,
            sample=args.sample,
            seed=args.seed,
            rank=args.rank,
        )
        print(f"audit report: {write_report(out, options)}")
        return 0
    from segbatch.driver.plan import coco_info
    from segbatch.outputs.exports import FORMATS, describe, parse_formats, record_exports, write_exports

    job = out.read_json(JOB)
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "run_dir", "forms", "only")}
    values = {**job["config"], **flags}  # the run's own export options by default
    if args.only is not None and "export_order" not in flags:
        values["export_order"] = None  # a subset has its own default order (worst label first), not the run's
    config = JobConfig.from_mapping(values)
    forms = parse_formats(args.forms, "--format")
    if not forms:
        raise JobError(f"--format names no export form; valid: {list(FORMATS)}")
    settings = config.export_settings(coco_info(job["model"]["name"], job.get("started", "")), only=args.only)
    records = write_exports(out, forms, settings)
    out.write_json(JOB, record_exports(out.read_json(JOB), records, settings))
    for form, record in records.items():
        print(describe(form, record["counts"], out))
    return 0


def console() -> None:
    """The ``segbatch`` command: :func:`main`, then a fast exit (see :func:`segbatch.driver.interrupt.fast_exit`)."""
    code = main()
    from segbatch.driver.interrupt import fast_exit

    fast_exit(code)


if __name__ == "__main__":
    console()
