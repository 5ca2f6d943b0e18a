"""The job's configuration: one frozen, validated :class:`JobConfig`.

Built once, from keyword arguments, a YAML file, the CLI or the Ray job entry point, and
validated on construction so that a bad value fails before any work starts. Stages never
see the whole config; :mod:`segbatch.pipeline` hands each one the fields it needs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml

from segbatch.errors import JobError
from segbatch.io.images import DECODE_MODES, HIGH_BIT_DEPTHS, DecodeMode, HighBitDepth
from segbatch.io.regions import PILLOW_MAX_IMAGE_PIXELS

Precision = Literal["fp32", "fp16", "bf16"]
MissingLabelPolicy = Literal["error", "ignore"]

TILE_MERGES = ("nms", "merge")  # as segbatch.stages.tiling.MERGES, without importing torch
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass(frozen=True)
class JobConfig:
    """Everything one labeling run needs.

    ``input``/``output``/``labels``/``weights``/``label_map`` accept local paths and any
    fsspec URL. ``storage_options`` go to fsspec and are never written anywhere.
    """

    input: str
    output: str
    model: str
    weights: str = "DEFAULT"
    # hf: universal heads (Mask2Former, MaskFormer) need it: semantic | instance.
    task: str | None = None
    # YAML/JSON model card: task, categories, preprocessing, output (export: needs one).
    model_card: str | None = None
    # hf:/smp: hub ids: branch, tag or commit.
    model_revision: str | None = None
    labels: str | None = None
    label_map: str | None = None
    missing_labels: MissingLabelPolicy = "error"
    # The layout: None sizes it from the cluster (segbatch.driver.layout: one actor per GPU,
    # or one single-threaded actor per CPU); every value given wins.
    batch_size: int | None = None  # images per model batch (sized: 32 on a GPU, 8 on a CPU)
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None  # CPU reservation per actor (and its torch threads, if given)
    # torch intra-op threads per actor (default: cpus_per_actor, at least 1). More threads
    # than reserved CPUs let the model use cores that light decode/encode tasks leave idle.
    torch_threads: int | None = None
    # Batches a model actor takes in at once (Ray's max_concurrency): the model runs one at a
    # time, while Ray Data fetches and batches the next inputs and stores the last outputs
    # in other threads. Default: 2 on a GPU (the device would otherwise wait on that CPU
    # work), 1 on a CPU (whose cores are already busy).
    calls_per_actor: int | None = None
    task_cpus: float | None = None  # CPU reservation per read / encode task (sized: 0.25)
    # Stop a run that commits nothing for this many seconds while a resource its layout needs
    # is missing from the cluster (0: never).
    stall_timeout: float = 600.0
    # Runs with labels (semantic models): the label-quality evidence (segbatch.quality) takes the
    # class probabilities at every quality_stride-th pixel of each axis of the class map (1: every
    # pixel; 4: 1/16 of them, ~3 ms per 640×480 image on a CPU); 0 turns label quality off.
    quality_stride: int = 4
    verbose: bool = False  # Ray Data's own per-operator progress lines on the console
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    min_size: int | None = None
    precision: Precision = "fp32"
    # Run semantic models on channels-last (NHWC) tensors where that is faster: on the CPU
    # (oneDNN) and on a GPU under fp16/bf16 (cuDNN's tensor cores); a GPU in fp32 keeps NCHW
    # (measured 1.5× slower in NHWC there). On a CPU, MobileNetV3 models run 1.2-1.5× faster;
    # their kernels round sums differently (logits differ by ~1e-6 for MobileNetV3, up to
    # ~4e-5 for ResNet-50), which moves only near-tie pixels (README "Agreement with
    # torchvision"). False: torchvision's layout, exactly.
    channels_last: bool = True
    # Fold each BatchNorm into the convolution before it (segbatch.models.fold): LRASPP 1.3×,
    # DeepLabV3-MobileNetV3 1.1× faster on a CPU; logits move by ~1e-7 (near-ties only).
    # False: torchvision's operators, exactly.
    fold_batchnorm: bool = True
    # How 16/32-bit grayscale becomes 8-bit (segbatch.io.images): "range" (the image's own
    # min..max), "percentile" (ImageJ's auto contrast) or "full" (÷257).
    high_bit_depth: HighBitDepth = "range"
    # Where JPEGs are decoded and resized: "host" (the read tasks), "device" (the model actor:
    # its GPU, or torchvision's CPU decoder on a CPU actor; encoded bytes travel instead of
    # pixels) or "auto" (device, on GPUs and CPUs alike). The same pixels either way, so not
    # part of the job's identity; job.json's layout records the mode that ran.
    decode: DecodeMode = "auto"
    # Pixels an image may have (Pillow's decompression-bomb guard, made explicit): more is an
    # error row. Default: Pillow's own limit; 0: no limit.
    max_image_pixels: int = PILLOW_MAX_IMAGE_PIXELS
    # Tiled inference for large images (segbatch.stages.tiling; README "Large images"): None runs
    # each image whole, resized for the model. "1024" or "768x1024" (height x width, image pixels)
    # cuts it into windows of that size, each run at tile_scale (1.0: native pixels) and blended.
    tile: str | int | None = None
    tile_overlap: str | int | float = 0  # pixels (256) or a fraction of the tile (0.25)
    tile_scale: float = 1.0
    tile_blend: str = "mean"  # mean (MMSegmentation's slide mode) or gaussian (MONAI)
    # Instance models, tiled: detections of neighbouring tiles merged by mask NMS or by merging
    # (intersection over the smaller mask), as SAHI; the match threshold.
    tile_merge: str = "merge"
    tile_merge_threshold: float = 0.5
    # Instance models, tiled: also one pass over the whole image (for objects larger than a tile),
    # its detections merged with the tiles' (SAHI's standard prediction).
    tile_full_pass: bool = False
    # Strips each large image is split into across the model actors (segbatch.stages.strips);
    # None: sized from the actors and the number of images, 1: whole images only.
    tile_strips: int | None = None
    rows_per_part: int | None = None  # images per committed part file (sized: 8 to 64 by the run's size)
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    ray_address: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    # COCO export options (segbatch.outputs.coco.ExportOptions): they shape only the COCO
    # files, so changing them does not make a different job.
    coco_segmentation: str = "rle"
    polygon_tolerance: float = 1.0
    min_mask_area: int = 0
    export_classes: tuple[str, ...] | None = None
    coco_category_ids: str | None = None
    # Extra export forms written after finalize (segbatch.outputs.exports: "label-studio",
    # "cvat-masks"; "coco" is always written), and the Label Studio tasks' order, count and image
    # URL root. Like the COCO options they shape only derived files: not part of the job's identity.
    exports: tuple[str, ...] = ()
    export_order: str | None = None
    export_limit: int | None = None
    image_root: str | None = None
    # Write report.html at the end of the run (every run; with labels it audits them too).
    report: bool = True

    def __post_init__(self) -> None:
        for name in ("input", "output", "model", "weights"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise JobError(f"{name} must be a non-empty string, got {value!r}")
        if self.batch_size is not None:
            _check_int("batch_size", self.batch_size, minimum=1)
        if self.actors is not None:
            _check_int("actors", self.actors, minimum=1)
        if self.rows_per_part is not None:
            _check_int("rows_per_part", self.rows_per_part, minimum=1)
        if self.torch_threads is not None:
            _check_int("torch_threads", self.torch_threads, minimum=1)
        if self.calls_per_actor is not None:
            _check_int("calls_per_actor", self.calls_per_actor, minimum=1)
        if self.min_size is not None:
            _check_int("min_size", self.min_size, minimum=16)
        if self.gpus_per_actor is not None and not (_is_number(self.gpus_per_actor) and self.gpus_per_actor >= 0):
            raise JobError(f"gpus_per_actor must be a number >= 0, got {self.gpus_per_actor!r}")
        for name in ("cpus_per_actor", "task_cpus"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 0):
                raise JobError(f"{name} must be a number > 0, got {value!r}")
        _check_int("quality_stride", self.quality_stride, minimum=0)
        if not (_is_number(self.stall_timeout) and self.stall_timeout >= 0):
            raise JobError(f"stall_timeout must be a number of seconds >= 0, got {self.stall_timeout!r}")
        if not isinstance(self.verbose, bool):
            raise JobError(f"verbose must be true or false, got {self.verbose!r}")
        for name in ("score_threshold", "mask_threshold"):
            value = getattr(self, name)
            if not (_is_number(value) and 0.0 <= value <= 1.0):
                raise JobError(f"{name} must be a number in [0, 1], got {value!r}")
        if not isinstance(self.channels_last, bool):
            raise JobError(f"channels_last must be true or false, got {self.channels_last!r}")
        if not isinstance(self.fold_batchnorm, bool):
            raise JobError(f"fold_batchnorm must be true or false, got {self.fold_batchnorm!r}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise JobError(f"precision must be one of fp32, fp16, bf16, got {self.precision!r}")
        if self.high_bit_depth not in HIGH_BIT_DEPTHS:
            raise JobError(f"high_bit_depth must be one of {', '.join(HIGH_BIT_DEPTHS)}, got {self.high_bit_depth!r}")
        if self.decode not in DECODE_MODES:
            raise JobError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        _check_int("max_image_pixels", self.max_image_pixels, minimum=0)
        self._check_tiling()
        if self.task is not None and self.task not in ("semantic", "instance"):
            raise JobError(f"task must be 'semantic' or 'instance', got {self.task!r}")
        for name in ("model_card", "model_revision"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise JobError(f"{name} must be a non-empty string, got {value!r}")
        if self.missing_labels not in ("error", "ignore"):
            raise JobError(f"missing_labels must be 'error' or 'ignore', got {self.missing_labels!r}")
        if self.label_map is not None and self.labels is None:
            raise JobError(f"label_map {self.label_map!r} was given without labels")
        if not isinstance(self.storage_options, Mapping):
            raise JobError(f"storage_options must be a mapping, got {type(self.storage_options).__name__}")
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in self.extensions)
        if not exts:
            raise JobError("extensions must name at least one file extension, e.g. ['.jpg', '.png']")
        object.__setattr__(self, "extensions", exts)
        if self.export_classes is not None:
            object.__setattr__(self, "export_classes", tuple(str(c) for c in self.export_classes))
        from segbatch.outputs.exports import parse_formats

        object.__setattr__(self, "exports", parse_formats(self.exports, "exports"))
        self.export_settings()  # validates the export fields
        if "label-studio" in self.exports:
            from segbatch.outputs.label_studio import check_image_source

            check_image_source(self.input, self.image_root)
        object.__setattr__(self, "storage_options", dict(self.storage_options))

    def _check_tiling(self) -> None:
        if self.tile_merge not in TILE_MERGES:
            raise JobError(f"tile_merge must be one of {', '.join(TILE_MERGES)}, got {self.tile_merge!r}")
        if not (_is_number(self.tile_merge_threshold) and 0.0 < self.tile_merge_threshold <= 1.0):
            raise JobError(f"tile_merge_threshold must be a number in (0, 1], got {self.tile_merge_threshold!r}")
        if self.tile is None:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in ("tile_overlap", "tile_scale", "tile_blend", "tile_merge", "tile_merge_threshold",
                         "tile_full_pass", "tile_strips"):  # fmt: skip
                if str(getattr(self, name)) != str(defaults[name]):  # "0" from the CLI is the default 0
                    raise JobError(f"{name} {getattr(self, name)!r} was given without tile (e.g. --tile 1024)")
            return
        if isinstance(self.tile, bool) or not isinstance(self.tile, str | int):
            raise JobError(f"tile must be SIZE or HEIGHTxWIDTH in pixels (e.g. 1024, 768x1024), got {self.tile!r}")
        if isinstance(self.tile_overlap, bool) or not isinstance(self.tile_overlap, str | int | float):
            raise JobError(
                f"tile_overlap must be pixels (e.g. 256) or a fraction (e.g. 0.25), got {self.tile_overlap!r}"
            )
        if not _is_number(self.tile_scale):
            raise JobError(f"tile_scale must be a number > 0, got {self.tile_scale!r}")
        if not isinstance(self.tile_full_pass, bool):
            raise JobError(f"tile_full_pass must be true or false, got {self.tile_full_pass!r}")
        strips = self.tile_strips
        if strips is not None and (isinstance(strips, bool) or not isinstance(strips, int) or not 1 <= strips <= 64):
            raise JobError(f"tile_strips must be a whole number in 1..64 (strips per image), got {strips!r}")
        self.tile_spec()

    def tile_spec(self) -> Any:
        """The :class:`segbatch.stages.tiling.TileSpec` of a tiled run, None for an untiled one."""
        if self.tile is None:
            return None
        from segbatch.stages.tiling import TileSpec  # torch: only runs that tile pay for it here

        try:
            return TileSpec.parse(str(self.tile), str(self.tile_overlap), float(self.tile_scale), self.tile_blend)
        except ValueError as err:
            raise JobError(str(err)) from None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> JobConfig:
        """Build from a mapping whose keys are field names (``-`` and ``_`` both accepted)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise JobError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(names))}")
            listed = name in ("extensions", "export_classes") and value is not None
            kwargs[name] = tuple(value) if listed else value
        missing = [n for n in ("input", "output", "model") if kwargs.get(n) is None]
        if missing:
            raise JobError(f"missing required config value(s): {', '.join(missing)}")
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> JobConfig:
        """Load a YAML job file; ``overrides`` (e.g. CLI flags) win over the file."""
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise JobError(f"cannot read config file {str(path)!r}: {err.strerror}") from err
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise JobError(f"config file {str(path)!r} is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise JobError(f"config file {str(path)!r} must hold a mapping of keys to values")
        return cls.from_mapping({**values, **(overrides or {})})

    def export_options(self) -> Any:
        """The COCO export options (:class:`segbatch.outputs.coco.ExportOptions`)."""
        from segbatch.outputs.coco import ExportOptions

        _check_int("min_mask_area", self.min_mask_area, minimum=0)
        if not _is_number(self.polygon_tolerance):
            raise JobError(f"polygon_tolerance must be a number of pixels, got {self.polygon_tolerance!r}")
        return ExportOptions(
            segmentation=self.coco_segmentation,
            polygon_tolerance=float(self.polygon_tolerance),
            min_area=self.min_mask_area,
            classes=self.export_classes,
            category_ids_from=self.coco_category_ids,
            storage_options=self.storage_options,
        )

    def export_settings(self, coco_info: Mapping[str, Any] | None = None, only: str | None = None) -> Any:
        """How the export forms are written (:class:`segbatch.outputs.exports.ExportSettings`)."""
        from segbatch.outputs.exports import ExportSettings

        if self.export_limit is not None:
            _check_int("export_limit", self.export_limit, minimum=1)
        if self.image_root is not None and (not isinstance(self.image_root, str) or not self.image_root):
            raise JobError(f"image_root must be a non-empty URL, got {self.image_root!r}")
        return ExportSettings(
            coco=self.export_options(),
            coco_info=dict(coco_info or {}),
            order=self.export_order,
            limit=self.export_limit,
            image_root=self.image_root,
            only=only,
        )

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values with every secret removed (for job.json and logs)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "storage_options":
                value = sorted(value)  # the keys say what was configured; values may be secrets
            elif isinstance(value, str):
                value = redact_url(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def redact_url(url: str) -> str:
    """Drop credentials and query strings from a URL (``s3://key:secret@b/x?token=…``)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "REDACTED" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def parse_storage_options(text: str) -> dict[str, Any]:
    """``--storage-options`` JSON → dict, with an error that shows what was wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise JobError(f"--storage-options must be a JSON object: {err}") from err
    if not isinstance(value, dict):
        raise JobError(f"--storage-options must be a JSON object, got {type(value).__name__}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise JobError(f"{name} must be an integer >= {minimum}, got {value!r}")
