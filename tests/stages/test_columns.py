"""Per-row array columns: stacked when rows are alike, objects otherwise, row i the same either way."""

from __future__ import annotations

import pickle

import numpy as np

from segbatch.stages.columns import concat_columns, per_row, rows_of


def test_alike_rows_stack_and_unlike_rows_stay_objects():
    maps = [np.full((3, 4), i, np.uint8) for i in range(5)]
    stacked = per_row(maps)
    assert stacked.shape == (5, 3, 4) and stacked.dtype == np.uint8
    mixed = per_row([*maps[:2], np.zeros((0, 0), np.uint8)])
    assert mixed.dtype == object and mixed.shape == (3,)
    for column in (stacked, mixed):
        assert np.array_equal(column[1], maps[1])
    assert per_row([]).shape == (0,)
    # A stacked column pickles as one buffer (what leaves a model actor), not one per row.
    buffers: list = []
    pickle.dumps(stacked, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1


def test_columns_of_different_batches_concatenate_row_by_row():
    a = per_row([np.ones((2, 2), np.uint8)] * 2)
    b = per_row([np.zeros((3, 3), np.uint8), np.zeros((0, 0), np.uint8)])
    c = per_row([np.ones((2, 2), np.uint8)])
    joined = concat_columns([a, b, c])
    assert joined.dtype == object and [r.shape for r in joined] == [(2, 2), (2, 2), (3, 3), (0, 0), (2, 2)]
    assert concat_columns([a, c]).shape == (3, 2, 2)  # alike: still one array
    assert concat_columns([np.arange(2), np.arange(3)]).tolist() == [0, 1, 0, 1, 2]
    rows = rows_of(a)
    rows[0] = np.zeros((7, 7), np.uint8)  # replaceable by a row of another shape
    assert rows.dtype == object and rows[0].shape == (7, 7)
