"""The export forms of a run, written by one function at run time (``--export``) and afterwards
(``segbatch export``), from the run's Parquet: the same options give the same bytes.

Forms (names as the output folder holds them):
    ``coco``          ``predictions.coco.json`` + ``predictions.results.json`` (:mod:`.coco`;
                      every run writes it in finalize)
    ``label-studio``  ``label-studio/tasks.json`` + ``label-studio/config.xml`` (:mod:`.label_studio`)
    ``cvat-masks``    ``cvat-masks/`` + ``cvat-masks.zip``, CVAT's "Segmentation mask 1.1" (:mod:`.cvat_masks`)

The COCO options (``--export-classes``, ``--min-mask-area``) shape every form; ``order``,
``limit`` and ``image_root`` shape the Label Studio tasks (the one form with an order);
``only`` restricts every form to a subset of the images (:mod:`.selection`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segbatch.errors import JobError
from segbatch.outputs.coco import ExportOptions, write_coco_exports
from segbatch.outputs.cvat_masks import CVAT_DIR, CVAT_ZIP, CvatMasksOptions, write_cvat_masks
from segbatch.outputs.folder import COCO, JOB, OutDir
from segbatch.outputs.label_studio import CONFIG, LABEL_STUDIO_DIR, TASKS, LabelStudioOptions, write_label_studio
from segbatch.outputs.selection import check_limit, check_only, check_order, resolved_order, select_images

FORMATS = ("coco", "label-studio", "cvat-masks")


def parse_formats(value: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` → the form names, in order, each once.

    Raises :class:`JobError` naming ``what`` (the option), the bad value and the valid forms.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise JobError(f"{what} must be a list of export forms (one of {list(FORMATS)}), got {value!r}")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise JobError(f"{what}: {item!r} is not an export form; valid: {list(FORMATS)}")
        name = item.strip()
        if not name:
            continue
        if name not in FORMATS:
            raise JobError(f"{what}: {name!r} is not an export form; valid: {list(FORMATS)}")
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class ExportSettings:
    """How the forms are written.

    coco: the COCO options; their ``classes`` and ``min_area`` apply to every form.
    coco_info: the COCO ``info`` block (when the job first started: same job, same bytes).
    order, limit, image_root: the Label Studio tasks' order, count and image URLs
        (:class:`segbatch.outputs.label_studio.LabelStudioOptions`).
    only: ``label-issues`` restricts every form to images whose label was flagged (None: all).
    """

    coco: ExportOptions = field(default_factory=ExportOptions)
    coco_info: Mapping[str, Any] = field(default_factory=dict)
    order: str | None = None
    limit: int | None = None
    image_root: str | None = None
    only: str | None = None

    def __post_init__(self) -> None:
        check_order(self.order)
        check_limit(self.limit)
        check_only(self.only)
        self.label_studio()  # validates the image root

    def label_studio(self) -> LabelStudioOptions:
        return LabelStudioOptions(
            order=resolved_order(self.order, self.only),
            limit=self.limit,
            image_root=self.image_root,
            classes=self.coco.classes,
            min_area=self.coco.min_area,
            only=self.only,
        )

    def cvat_masks(self) -> CvatMasksOptions:
        return CvatMasksOptions(classes=self.coco.classes, min_area=self.coco.min_area)

    def options_of(self, form: str) -> dict[str, Any]:
        """What ``form`` is written with, as job.json records it (a rerun compares these)."""
        subset = {"only": self.only} if self.only is not None else {}
        if form == "coco":
            return {**self.coco.to_dict(), **subset}
        if form == "label-studio":
            ls = self.label_studio()
            classes = None if ls.classes is None else list(ls.classes)
            return {"order": ls.order, "limit": ls.limit, "image_root": ls.image_root, "classes": classes,
                    "min_area": ls.min_area, **subset}  # fmt: skip
        if form == "cvat-masks":
            classes = None if self.coco.classes is None else list(self.coco.classes)
            return {"classes": classes, "min_area": self.coco.min_area, **subset}
        raise JobError(f"{form!r} is not an export form; valid: {list(FORMATS)}")


def write_exports(out: OutDir, forms: Sequence[str], settings: ExportSettings) -> dict[str, dict[str, Any]]:
    """Write ``forms`` of the finished run in ``out`` from its Parquet tables (no model run).

    Returns per form ``{"options": settings.options_of(form), "counts": {...}}`` (the
    writer's counts); :func:`record_exports` puts that into job.json.
    """
    forms = parse_formats(forms, "export forms")
    subset: np.ndarray | None = None
    if settings.only is not None:
        subset = np.sort(select_images(out, only=settings.only))
    records: dict[str, dict[str, Any]] = {}
    for form in forms:
        if form == "coco":
            model = out.read_json(JOB)["model"]
            counts = write_coco_exports(
                out,
                task=model["task"],
                model_categories=tuple(model["categories"]),
                background=model["background"],
                info=settings.coco_info,
                options=settings.coco,
                image_ids=subset,
                only=settings.only,
            )
        elif form == "label-studio":
            counts = write_label_studio(out, settings.label_studio())
        else:
            counts = write_cvat_masks(out, settings.cvat_masks(), image_ids=subset)
        records[form] = {"options": settings.options_of(form), "counts": counts}
    return records


def record_exports(
    job: Mapping[str, Any], records: Mapping[str, Mapping[str, Any]], settings: ExportSettings
) -> dict[str, Any]:
    """``job`` (job.json) with what ``records`` (of :func:`write_exports` with ``settings``) say the
    files now hold: COCO under ``coco_export`` (and the COCO keys of ``config``), the other forms
    under ``exports``."""
    result = dict(job)
    exports = dict(result.get("exports") or {})
    for form, record in records.items():
        if form == "coco":
            result["coco_export"] = dict(record["options"])
            result["config"] = {**result.get("config", {}), **settings.coco.config_values()}
        else:
            exports[form] = {"options": dict(record["options"]), "counts": dict(record["counts"])}
    if exports:
        result["exports"] = exports
    return result


def stale_forms(job: Mapping[str, Any], forms: Sequence[str], settings: ExportSettings) -> list[str]:
    """Of ``forms``, those whose files job.json says were written with other options (or not at all)."""
    stale = []
    for form in forms:
        held = job.get("coco_export") if form == "coco" else (job.get("exports") or {}).get(form, {}).get("options")
        if held != settings.options_of(form):
            stale.append(form)
    return stale


def describe(form: str, counts: Mapping[str, int], out: OutDir) -> str:
    """One line saying what ``form`` wrote and where."""
    if form == "coco":
        return (
            f"wrote {counts['annotations']} annotations to {out.url_of(COCO)} ({counts['below_min_area']} below the "
            f"minimum area, {counts['other_class']} of other classes left out)"
        )
    if form == "label-studio":
        return (
            f"wrote {counts['tasks']} Label Studio tasks ({counts['results']} brush masks) to "
            f"{out.url_of(LABEL_STUDIO_DIR, TASKS)}, labeling config {out.url_of(LABEL_STUDIO_DIR, CONFIG)}"
        )
    return (
        f"wrote {counts['items']} images ({counts['pngs']} with masks, {counts['instances']} instances) in CVAT's "
        f"Segmentation mask 1.1 form to {out.url_of(CVAT_ZIP)} (unpacked: {out.url_of(CVAT_DIR)})"
    )
