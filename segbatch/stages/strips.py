"""One large image across several model actors: its rows of work split into strips, joined again before encode.

A tiled run whose images are fewer than about twice its model actors would leave actors idle
while one holds a whole large image. :func:`strips_per_image` says into how many strips
(:func:`~segbatch.stages.tiling.strip_of`: consecutive grid rows) each image is cut; :func:`expand`
repeats each manifest row once per strip (columns ``strip``, ``strips``), so that the executor's
batches — one strip a batch — go to whichever actor is free, with its retries and backpressure.
Each strip comes back with a ``strip_part`` (:class:`~segbatch.stages.tiled.StripOutput` or
:class:`~segbatch.stages.tiled.InstanceStrip`); the executor commits an image's strips in one encode
task, where :func:`join_rows` makes them one predicted row again: nothing of an image is committed
before all of it is (resume stays per image).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

MAX_STRIPS = 64  # strips of one image at most: a strip below a few grid rows only adds shared rows
STRIP_COLUMNS = ("strip", "strips", "strip_part")


def strips_per_image(actors: int, images: int) -> int:
    """Strips per image for ``images`` images on ``actors`` model actors: 1 (whole images) when
    there are at least twice as many images as actors, else enough for every actor to have two
    strips to work on (the overlap's shared grid rows cost less than an idle actor)."""
    if actors < 1 or images < 1:
        raise ValueError(f"actors and images must be >= 1, got {actors} and {images}")
    return max(1, min(MAX_STRIPS, math.ceil(2 * actors / images))) if actors > 1 else 1


def expand(todo: pa.Table, count: int) -> pa.Table:
    """Each row of ``todo`` ``count`` times in a row, with ``strip`` (0 … count-1) and ``strips`` columns."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    index = np.repeat(np.arange(todo.num_rows), count)
    out = todo.take(pa.array(index))
    out = out.append_column("strip", pa.array(np.tile(np.arange(count, dtype=np.int32), todo.num_rows)))
    return out.append_column("strips", pa.array(np.full(len(index), count, dtype=np.int32)))


def join_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A predicted batch whose rows may be strips → one row per image (in first-seen order).

    Every strip of an image must be in ``batch`` (the executor groups them so). An image with a
    strip in error is an error row with the first such strip's error; else its strips' parts are
    joined (:func:`~segbatch.stages.tiled.join_strips`, :func:`~segbatch.stages.tiled.join_instance_strips`)
    into the fields the predictor gives an unsplit image. Times are summed; ``worker`` lists every
    actor that ran a strip."""
    if "strip_part" not in batch:
        return batch
    groups: dict[Any, list[int]] = {}
    for i, image_id in enumerate(batch["image_id"].tolist()):
        groups.setdefault(image_id, []).append(i)
    from segbatch.stages.columns import rows_of

    firsts = [rows[0] for rows in groups.values()]
    # Per-row arrays as object arrays: a joined image's map replaces its strips' empty ones.
    out = {k: (rows_of(v) if v.ndim > 1 or v.dtype == object else v)[firsts] for k, v in batch.items()
           if k not in STRIP_COLUMNS}  # fmt: skip
    for j, rows in enumerate(groups.values()):
        count = int(batch["strips"][rows[0]])
        rows = sorted(rows, key=lambda i: int(batch["strip"][i]))
        if [int(batch["strip"][i]) for i in rows] != list(range(count)):
            got = sorted(int(batch["strip"][i]) for i in rows)
            raise ValueError(f"image {batch['uri'][rows[0]]}: strips {got} of {count} in one commit")
        if count == 1:
            continue  # joined in the actor
        for key in ("t_read", "t_predict"):
            if key in out:
                out[key][j] = sum(float(batch[key][i]) for i in rows)
        out["worker"][j] = ", ".join(dict.fromkeys(str(batch["worker"][i]) for i in rows))
        bad = [i for i in rows if batch["status"][i] != "ok"]
        if bad:
            out["status"][j], out["error"][j] = "error", batch["error"][bad[0]]
            continue
        _set_joined(out, j, [batch["strip_part"][i] for i in rows])
    return out


def _set_joined(out: dict[str, np.ndarray], j: int, parts: list[Any]) -> None:
    # torch comes with these: imported where strips are joined, not by the driver that plans them.
    from segbatch.stages.tiled import InstanceStrip, StripOutput, crops_result, join_instance_strips, join_strips

    if isinstance(parts[0], StripOutput):
        tiled = join_strips(parts)
        out["label_map"][j] = tiled.label_map
        out["confidence"][j] = tiled.confidence
        out["uncertain_share"][j] = tiled.uncertain_share
        out["class_scores"][j] = tiled.class_scores
        return
    if not isinstance(parts[0], InstanceStrip):
        raise TypeError(f"a strip's part must be a StripOutput or an InstanceStrip, got {type(parts[0]).__name__}")
    _, labels, scores, crops = crops_result(join_instance_strips(parts)[0])
    out["inst_labels"][j], out["inst_scores"][j], out["inst_crops"][j] = labels, scores, crops
