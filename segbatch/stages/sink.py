"""The write stage: a Ray Data datasink that commits each write task's rows as one part file.

Kept apart from :mod:`segbatch.pipeline` (which imports the models, hence torch) so that
the workers running encode + write import only numpy, pyarrow and pycocotools: a worker
process starts ~2 s of CPU sooner, and on a small machine that CPU is the model's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from segbatch.outputs.parts import write_part


class PartsDatasink(Datasink[list[str]]):
    """Writes each write task's rows as one atomically committed, image_id-sorted part file.

    ``counter`` (optional): an actor handle with ``add(images, errors)``, told of every commit
    (fire-and-forget) so that the driver shows progress without listing storage.
    """

    def __init__(
        self, parts_url: str, storage_options: Mapping[str, Any], rows_per_part: int, counter: Any = None
    ) -> None:
        self.parts_url = parts_url
        self.storage_options = dict(storage_options)
        self.rows_per_part = rows_per_part
        self.counter = counter

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_part

    def write(self, blocks: Iterable[Any], ctx: Any) -> list[str]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables)
        name = write_part(table, self.parts_url, self.storage_options)
        if self.counter is not None:
            errors = pc.sum(pc.not_equal(table.column("status"), "ok")).as_py() or 0
            self.counter.add.remote(table.num_rows, errors)
        return [name]
