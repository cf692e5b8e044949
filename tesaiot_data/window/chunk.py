"""Chunks of rows and their two exits: Arrow batches (for sinks) and pandas frames (for users).

A `Chunk` is rows in arrival order as numpy arrays: int64 nanosecond times, float64 values and
integer codes into shared, append-only string lists (the window's dictionary generation). Its
int64 nanoseconds, float64 values and codes are already an Arrow record batch with dictionary
columns (`to_batches`), so the way to disk needs no pandas; `to_frame` gives the canonical
DataFrame users receive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from tesaiot_data.schema import (
    ARROW_SCHEMA,
    CATEGORY_COLUMNS,
    COLUMNS,
    TIME_TYPE,
    empty_frame,
    text_categories,
    used_categories,
)

__all__ = ["Chunk", "to_batches", "to_frame"]


@dataclass(slots=True)
class Chunk:
    """Rows in arrival order: int64 ns times, float64 values, integer dictionary codes.

    Chunks are never changed once made, so they can be shared with other threads.
    """

    timestamp: np.ndarray
    received: np.ndarray
    value: np.ndarray
    codes: dict[str, np.ndarray]
    categories: dict[str, list[str]]
    """Per column, the strings the codes index: the dictionary generation the chunk was
    made in. Shared, append-only lists, so a chunk stays readable after the window moved on."""

    def __len__(self) -> int:
        return len(self.received)

    def take(self, selector: slice | np.ndarray) -> Chunk:
        """Return the rows picked by a slice (views) or a boolean mask (copies)."""
        return Chunk(
            self.timestamp[selector],
            self.received[selector],
            self.value[selector],
            {name: codes[selector] for name, codes in self.codes.items()},
            self.categories,
        )

    @classmethod
    def concat(
        cls, chunks: Sequence[Chunk], *, code_dtypes: Mapping[str, type] | None = None
    ) -> Chunk:
        """Return the rows of several chunks of one generation as one (itself when alone).

        Args:
            chunks: Chunks of one dictionary generation, in order.
            code_dtypes: Per string column, the integer type to store its codes in;
                default int32.
        """
        if len(chunks) == 1 and code_dtypes is None:
            return chunks[0]
        return cls(
            np.concatenate([c.timestamp for c in chunks]),
            np.concatenate([c.received for c in chunks]),
            np.concatenate([c.value for c in chunks]),
            {
                name: np.concatenate([c.codes[name] for c in chunks]).astype(
                    (code_dtypes or {}).get(name, np.int32), copy=False
                )
                for name in CATEGORY_COLUMNS
            },
            chunks[0].categories,
        )

    def nbytes(self) -> int:
        """Return the bytes held by the chunk's arrays."""
        arrays = [self.timestamp, self.received, self.value, *self.codes.values()]
        return sum(a.nbytes for a in arrays)

    def to_arrow(self) -> pa.RecordBatch:
        """Return the rows as an Arrow record batch in `schema.ARROW_SCHEMA`.

        The time and value columns share the chunk's arrays (no copy; NaN values become
        nulls, as a Parquet reader expects). Each string column is a dictionary array of
        only the strings these rows use, so a batch of a few rows never carries the whole
        dictionary generation.

        Returns:
            One record batch of `len(self)` rows.
        """
        columns: dict[str, pa.Array] = {
            "timestamp": pa.array(self.timestamp.view("M8[ns]"), type=TIME_TYPE),
            "received_at": pa.array(self.received.view("M8[ns]"), type=TIME_TYPE),
            "value": pa.array(self.value, type=pa.float64(), from_pandas=True),
        }
        for name in CATEGORY_COLUMNS:
            columns[name] = _dictionary_array(self.codes[name], self.categories[name])
        return pa.RecordBatch.from_arrays(
            [columns[name] for name in ARROW_SCHEMA.names], schema=ARROW_SCHEMA
        )


def to_batches(chunks: Sequence[Chunk]) -> list[pa.RecordBatch]:
    """Return the rows of chunks as Arrow record batches, in order.

    For the sinks (recorders, dataset writers), which write them to Parquet as they are.
    Chunks stay readable after the window evicted them and after it compacted its
    dictionaries; one batch is made per run of chunks of the same dictionary generation
    (usually one), holding only the strings its rows use. A single chunk's batch shares its
    time and value arrays.

    Args:
        chunks: Chunks from `RollingWindow.append()`, in arrival order.

    Returns:
        One batch per generation run, each in `schema.ARROW_SCHEMA`; empty when `chunks` is.
    """
    batches = []
    start = 0
    for end in range(1, len(chunks) + 1):
        if end == len(chunks) or chunks[end].categories is not chunks[start].categories:
            batches.append(Chunk.concat(chunks[start:end]).to_arrow())
            start = end
    return batches


def to_frame(chunks: Sequence[Chunk]) -> pd.DataFrame:
    """Return the rows of chunks of one dictionary generation as one canonical DataFrame.

    A single chunk's frame shares its arrays (pass a copy, or a second empty chunk, when the
    frame leaves the thread that owns them).

    Args:
        chunks: Chunks of one generation, in order.

    Returns:
        The columns of `schema.COLUMNS`: timestamp and received_at datetime64[ns, UTC], value
        float64, the string columns category with only the strings the rows use; an empty
        canonical frame when `chunks` is empty.
    """
    if not chunks:
        return empty_frame()
    merged = Chunk.concat(chunks)
    generation = merged.categories
    data: dict[str, object] = {
        "timestamp": pd.DatetimeIndex(merged.timestamp.view("M8[ns]")).tz_localize("UTC"),
        "received_at": pd.DatetimeIndex(merged.received.view("M8[ns]")).tz_localize("UTC"),
        "value": merged.value,
    }
    for name in CATEGORY_COLUMNS:
        codes, names = _used_only(merged.codes[name], generation[name])
        data[name] = pd.Categorical.from_codes(
            codes, categories=text_categories(names), validate=False
        )
    return pd.DataFrame({name: data[name] for name in COLUMNS}, copy=False)


def _used_only(codes: np.ndarray, values: list[str]) -> tuple[np.ndarray, list[str]]:
    """The rows' codes and categories with only the strings the rows use.

    O(rows + distinct strings of the generation) in numpy, and O(strings used) in Python, so
    a frame or file of a few rows never copies a large dictionary.
    """
    size = len(values)  # the ingest thread may append to the shared list meanwhile
    compact = used_categories(codes, size)
    if compact is None:
        return codes, values[:size]
    kept, remapped = compact
    return remapped, [values[i] for i in kept.tolist()]


def _dictionary_array(codes: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    codes, strings = _used_only(codes, values)
    indices = np.asarray(codes, dtype=np.int32)  # no copy for an unsealed chunk's codes
    missing = indices < 0
    array = pa.array(indices, type=pa.int32(), mask=missing if missing.any() else None)
    return pa.DictionaryArray.from_arrays(array, pa.array(strings, type=pa.string()))
