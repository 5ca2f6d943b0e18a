"""Planning on the driver: everything that can fail before work starts.

:func:`prepare` resolves the model and its weights, opens the labels and the output, checks
that this output holds this job (or none), lists the input and pairs labels (or reuses the
frozen manifest when resuming), and builds the job record that becomes ``job.json``.
Bad input raises :class:`~segbatch.errors.JobError` naming the value and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from segbatch._version import __version__
from segbatch.categories import EvalSpace, build_eval_space, parse_label_map
from segbatch.config import JobConfig, redact_url
from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.io.listing import Plan, build_plan, list_images, open_labels, with_manifest_schema
from segbatch.io.regions import PILLOW_MAX_IMAGE_PIXELS
from segbatch.outputs.folder import JOB, MANIFEST, OutDir, check_output, job_identity

if TYPE_CHECKING:
    from segbatch.models.info import ModelInfo, ModelOptions
    from segbatch.models.resolve import ResolvedModel

log = logging.getLogger("segbatch")

# Options that shape only instance models' results; a semantic model ignores them.
INSTANCE_OPTIONS = ("score_threshold", "mask_threshold", "min_size")
EXAMPLES = 3


@dataclass(frozen=True)
class InputChanges:
    """How the input differs from a frozen manifest (resume): files listed now but not then, and gone."""

    new: int
    gone: int
    new_examples: tuple[str, ...] = ()
    gone_examples: tuple[str, ...] = ()

    def describe(self) -> str | None:
        if not self.new and not self.gone:
            return None
        parts = []
        if self.new:
            parts.append(f"{self.new} file(s) in the input are new since this run's manifest was frozen "
                         f"(e.g. {', '.join(self.new_examples)})")  # fmt: skip
        if self.gone:
            parts.append(f"{self.gone} file(s) of the manifest are gone from the input "
                         f"(e.g. {', '.join(self.gone_examples)}; they become error rows)")  # fmt: skip
        return (
            "; ".join(parts) + ". A run covers the images listed when it started: to label new files, run the "
            "same command with a new --output (or point --input at a folder of just the new files)"
        )


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` found: the run's output, manifest, model and job record."""

    out: OutDir
    plan: Plan
    label_kind: str | None
    loaded: ModelInfo  # task, categories, preprocessing: the model as planned (segbatch.models.info)
    resolved: ResolvedModel  # what the actors build the model from (shipped through the object store)
    eval_space: EvalSpace
    job: dict[str, Any]
    resumed: bool
    changes: InputChanges | None = None  # resumed runs: how the input changed since the manifest
    warnings: tuple[str, ...] = field(default_factory=tuple)
    out_existed: bool = True  # whether the output folder was there before this run


def model_options(config: JobConfig) -> ModelOptions:
    from segbatch.models.info import ModelOptions

    return ModelOptions(
        score_threshold=config.score_threshold, mask_threshold=config.mask_threshold, min_size=config.min_size
    )


def applicable_options(config: JobConfig, task: str) -> tuple[dict[str, Any], list[str]]:
    """The result-shaping options as they apply to a ``task`` model, and one warning per option
    given (not at its default) that does not apply. Options that do not apply are recorded as None,
    so that passing one does not make a different job."""
    defaults = {f.name: f.default for f in dataclasses.fields(JobConfig)}
    applied: dict[str, Any] = {
        "score_threshold": config.score_threshold,
        "mask_threshold": config.mask_threshold,
        "min_size": config.min_size,
        "precision": config.precision,
        "channels_last": config.channels_last,
        "fold_batchnorm": config.fold_batchnorm,
        "missing_labels": config.missing_labels,
        "high_bit_depth": config.high_bit_depth,
        "quality_stride": config.quality_stride if config.labels is not None else None,
        "extensions": list(config.extensions),
    }
    warnings = []
    if task != "instance":
        for name in INSTANCE_OPTIONS:
            if getattr(config, name) != defaults[name]:
                flag = "--" + name.replace("_", "-")
                warnings.append(f"{flag} {getattr(config, name)} applies to instance models; "
                                f"{config.model!r} is {task}: ignored")  # fmt: skip
            applied[name] = None
    applied.update(tiling_options(config, task, warnings))
    return applied, warnings


def tiling_options(config: JobConfig, task: str, warnings: list[str]) -> dict[str, Any]:
    """The tiling options as they apply (they change outputs: part of the job's identity). An
    untiled run at the default pixel limit records them as None, so earlier outputs resume."""
    spec = config.tile_spec()
    max_pixels = config.max_image_pixels
    out: dict[str, Any] = {"max_image_pixels": None if max_pixels == PILLOW_MAX_IMAGE_PIXELS else max_pixels}
    names = ("tile", "tile_overlap", "tile_scale", "tile_blend", "tile_merge", "tile_merge_threshold")
    if spec is None:
        return {**out, **dict.fromkeys(names)}
    out.update(tile=f"{spec.tile[0]}x{spec.tile[1]}", tile_overlap=spec.overlap, tile_scale=spec.scale)
    semantic = task == "semantic"
    out.update(tile_blend=spec.blend if semantic else None)
    out.update(tile_merge=None if semantic else config.tile_merge)
    out.update(tile_merge_threshold=None if semantic else config.tile_merge_threshold)
    if config.tile_full_pass and not semantic:  # recorded only when on: earlier outputs keep their identity
        out["tile_full_pass"] = True
    defaults = {f.name: f.default for f in dataclasses.fields(JobConfig)}
    for name, applies in (
        ("tile_blend", semantic),
        ("tile_merge", not semantic),
        ("tile_merge_threshold", not semantic),
        ("tile_full_pass", not semantic),
    ):
        if not applies and getattr(config, name) != defaults[name]:
            flag = "--" + name.replace("_", "-")
            warnings.append(f"{flag} {getattr(config, name)} applies to {'semantic' if not semantic else 'instance'} "
                            f"models; {config.model!r} is {task}: ignored")  # fmt: skip
    return out


def prepare(config: JobConfig) -> Prepared:
    """Everything that can fail before work starts: model, weights, input, labels, output.
    A built-in model is planned from its files without torch (:func:`segbatch.models.info.describe`);
    the model actors check the rest of its weights when they build it."""
    from segbatch.models.info import describe
    from segbatch.models.resolve import resolve_model

    so = config.storage_options
    out = OutDir.open(config.output, so)
    check_output_place(config)
    with fsio.storage_errors(config.output, "output"):
        out_existed = bool(out.fs.exists(out.root))
    with fsio.storage_errors(config.weights, "weights"):
        resolved = resolve_model(
            config.model,
            config.weights,
            task=config.task,
            model_card=config.model_card,
            revision=config.model_revision,
            storage_options=so,
        )
    loaded = describe(resolved, model_options(config))
    label_map = None
    label_map_sha = None
    if config.label_map is not None:
        try:
            with fsio.storage_errors(config.label_map, "label map"):
                data = fsio.read_bytes(config.label_map, so)
        except FileNotFoundError:
            raise JobError(f"label map {config.label_map!r} does not exist") from None
        label_map = parse_label_map(data, config.label_map)
        label_map_sha = hashlib.sha256(data).hexdigest()
    applied, warnings = applicable_options(config, loaded.task)
    identity = job_identity(
        input=redact_url(fsio.canonical_url(config.input)),
        labels=None if config.labels is None else redact_url(fsio.canonical_url(config.labels)),
        label_map_sha256=label_map_sha,
        model=config.model,
        weights_source=redact_url(resolved.source),
        weights_sha256=resolved.sha256,
        # task and model card for hf:/smp:/export:/plugins; nothing for a built-in (earlier outputs resume)
        options={**applied, **resolved.identity_options()},
    )
    with fsio.storage_errors(config.output, "output"):
        resumed = check_output(out, identity)
    labels = None
    if config.labels is not None:
        with fsio.storage_errors(config.labels, "labels"):
            labels = open_labels(config.labels, so)
    changes = None
    with fsio.storage_errors(config.input, "input"):
        if resumed and out.exists(MANIFEST):
            # The manifest is frozen at the first run: a resumed run covers exactly those
            # images. The input is listed again only to say what changed since.
            previous = out.read_json(JOB)
            plan = Plan(
                manifest=with_manifest_schema(out.read_table(MANIFEST)),
                unmatched_labels=previous.get("labels", {}).get("unmatched_label_files", 0),
            )
            changes = compare_input(config, plan.manifest)
        else:
            plan = build_plan(config.input, labels, config.extensions, so)
    label_kind = None if labels is None else labels.kind
    eval_space = build_eval_space(
        loaded.categories,
        loaded.background,
        label_kind,
        labels.coco.categories
        if labels is not None and labels.coco is not None
        else (label_map.categories if label_map else None),
        label_map.match if label_map else None,
    )
    job = {
        "identity": identity,
        "config": config.public_dict(),
        "applied": applied,
        "warnings": warnings,
        "model": {
            "name": config.model,
            "task": loaded.task,
            "description": loaded.description,
            "categories": list(loaded.categories),
            "background": loaded.background,
            "preprocess": loaded.preprocess.to_dict(),
            "weights": {"source": redact_url(resolved.source), "sha256": resolved.sha256},
            "fast_paths": loaded.fast_paths,
            **resolved.job_json(),  # kind, revision, files, card, hub commit, …
        },
        "labels": {
            "kind": label_kind,
            "unmatched_label_files": plan.unmatched_labels,
            "ambiguous_images": plan.ambiguous,
        },
        "listing": {"images": plan.manifest.num_rows, "skipped": plan.skipped.to_dict()},
        "eval_classes": eval_space.to_dict(),
        "versions": versions(),
    }
    return Prepared(out, plan, label_kind, loaded, resolved, eval_space, job, resumed, changes, tuple(warnings),
                    out_existed)  # fmt: skip


def check_output_place(config: JobConfig) -> None:
    """The output must be a folder workers can write, and not inside the input."""
    out = OutDir.open(config.output, config.storage_options)
    fsio.require_shared_folder(out.fs, config.output, "output")
    if fsio.is_within(config.output, config.input):
        raise JobError(
            f"output {config.output!r} lies inside the input {config.input!r}: the next run would label its "
            "outputs (report pictures) as images; choose an --output outside the input"
        )


def compare_input(config: JobConfig, manifest: pa.Table) -> InputChanges:
    """List the input again and count files added or gone since ``manifest`` was frozen."""
    fs, root = fsio.resolve(config.input, config.storage_options)
    try:
        listed = list_images(fs, root, config.input, config.extensions).column("file_name")
    except JobError:  # the input is gone or empty now: every manifest file is gone
        listed = pa.chunked_array([], pa.string())
    frozen = manifest.column("file_name")
    new = pc.filter(listed, pc.invert(pc.is_in(listed, value_set=frozen.combine_chunks())))
    gone = pc.filter(frozen, pc.invert(pc.is_in(frozen, value_set=listed.combine_chunks())))
    return InputChanges(
        new=len(new),
        gone=len(gone),
        new_examples=tuple(new.slice(0, EXAMPLES).to_pylist()),
        gone_examples=tuple(gone.slice(0, EXAMPLES).to_pylist()),
    )


def coco_info(model: str, created: str) -> dict[str, Any]:
    """The COCO ``info`` block: what made the file and when the job first started."""
    return {
        "description": f"segbatch {__version__} predictions of {model}",
        "version": __version__,
        "date_created": created,
    }


def versions() -> dict[str, str]:
    """The versions of what made the outputs; torch's and torchvision's read from their files
    (:func:`_torch_version`): the driver does not import them (~4 s of CPU)."""
    import numpy as np
    import pycocotools
    import ray

    optional = {}  # the model libraries' versions, where installed (hf:, smp:)
    for dist in ("transformers", "segmentation-models-pytorch", "timm", "safetensors", "huggingface-hub"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            optional[dist] = metadata.version(dist)
    return {
        **optional,
        "segbatch": __version__,
        "python": platform.python_version(),
        "torch": _torch_version("torch"),
        "torchvision": _torch_version("torchvision"),
        "ray": ray.__version__,
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "pycocotools": getattr(pycocotools, "__version__", "unknown"),
        "platform": sys.platform,
    }


def _torch_version(dist: str) -> str:
    """``torch.__version__`` (or torchvision's) without importing it: the module's own when
    imported, else the ``__version__ = '…'`` line of its ``version.py`` (with the build's local
    part, ``+cu130``, which the distribution's metadata lacks), else the metadata."""
    module = sys.modules.get(dist)
    if module is not None:
        return str(module.__version__)
    with contextlib.suppress(Exception):
        spec = importlib.util.find_spec(dist)  # a top-level package: found, not imported
        for folder in (spec.submodule_search_locations or []) if spec else []:
            with open(os.path.join(folder, "version.py"), encoding="utf-8") as f:
                match = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", f.read(), re.M)
            if match:
                return match.group(1)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
