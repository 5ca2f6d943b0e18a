"""The output folder: its layout, which job it holds, the manifest and what is committed.

One run = one output URL (DESIGN.md "Output layout"). ``job.json`` records the job's
identity (:func:`job_identity`); a rerun with the same identity resumes, skipping every
image already committed in ``parts/``; a different identity is refused before any work.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from segbatch.errors import JobError
from segbatch.io import fs as fsio

MANIFEST = "manifest.parquet"
PARTS = "parts"
IMAGES = "images.parquet"
MASKS = "masks.parquet"
COCO = "predictions.coco.json"
RESULTS = "predictions.results.json"
REPORT = "report.html"
REPORT_DIR = "report"
METRICS = "metrics.json"
JOB = "job.json"
SUCCESS = "_SUCCESS"
LABEL_STUDIO = "label-studio"
CVAT_MASKS = "cvat-masks"
OURS = {MANIFEST, PARTS, IMAGES, MASKS, COCO, RESULTS, METRICS, JOB, SUCCESS, REPORT, REPORT_DIR,
        LABEL_STUDIO, CVAT_MASKS, f"{CVAT_MASKS}.zip"}  # fmt: skip


@dataclass(frozen=True)
class OutDir:
    """An output URL resolved once."""

    url: str
    fs: Any
    root: str
    storage_options: Mapping[str, Any]

    @classmethod
    def open(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> OutDir:
        fs, root = fsio.resolve(url, storage_options)
        return cls(url=url, fs=fs, root=root, storage_options=dict(storage_options or {}))

    def path(self, *names: str) -> str:
        return fsio.join(self.root, *names)

    def url_of(self, *names: str) -> str:
        return fsio.to_url(self.fs, self.path(*names))

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def read_json(self, name: str) -> dict[str, Any]:
        return json.loads(self.fs.cat_file(self.path(name)))

    def write_json(self, name: str, obj: Any) -> None:
        fsio.write_bytes_atomic(self.fs, self.path(name), (json.dumps(obj, indent=2) + "\n").encode())

    def write_table(self, name: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        fsio.write_bytes_atomic(self.fs, self.path(name), buf.getvalue())

    def read_table(self, name: str) -> pa.Table:
        with self.fs.open(self.path(name), "rb") as f:
            return pq.read_table(f)

    def part_files(self) -> list[str]:
        """Committed part files, sorted (in-flight temporaries are not ``*.parquet``)."""
        if not self.fs.exists(self.path(PARTS)):
            return []
        return sorted(p for p in self.fs.find(self.path(PARTS)) if p.endswith(".parquet"))

    def committed_ids(self) -> set[int]:
        """image_ids that some committed part file holds."""
        ids: set[int] = set()
        for p in self.part_files():
            with self.fs.open(p, "rb") as f:
                ids.update(pq.read_table(f, columns=["image_id"]).column(0).to_pylist())
        return ids


def job_identity(
    *,
    input: str,
    labels: str | None,
    label_map_sha256: str | None,
    model: str,
    weights_source: str,
    weights_sha256: str | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """What makes two runs the same job: same inputs, model, weights and result-shaping options."""
    return {
        "input": input,
        "labels": labels,
        "label_map_sha256": label_map_sha256,
        "model": model,
        "weights": weights_sha256 or weights_source,
        **dict(options),
    }


def check_output(out: OutDir, identity: Mapping[str, Any]) -> bool:
    """Raise if ``out`` holds another job or foreign files; True if it holds this job (resume)."""
    if not out.fs.exists(out.root):
        return False
    if not out.exists(JOB):
        entries = [e.rstrip("/").rsplit("/", 1)[-1] for e in out.fs.ls(out.root, detail=False)]
        foreign = sorted(e for e in entries if e not in OURS)
        if foreign:
            raise JobError(
                f"output {out.url!r} is not empty and holds no segbatch job "
                f"(found {', '.join(foreign[:5])}); choose an empty or new --output"
            )
        return False
    previous = out.read_json(JOB).get("identity", {})
    diff = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
    if diff:
        details = "; ".join(f"{k}: {previous.get(k)!r} there, {identity.get(k)!r} now" for k in diff)
        raise JobError(
            f"output {out.url!r} already holds a different job ({details}); choose another --output or delete it"
        )
    return True
