"""RollingWindow: the collector's bounded columnar window, tested without a broker."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tesaiot_data.messages import ColumnBatch, RawMessage
from tesaiot_data.parse.rows import parse_batch
from tesaiot_data.schema import ARROW_SCHEMA, COLUMNS
from tesaiot_data.window.rolling import RollingWindow

T0 = 1_765_276_245.0  # 2025-12-09T10:30:45Z
SECOND = 1_000_000_000


def batch(
    count: int, *, start: int = 0, at: float = T0, devices: int = 3, step: float = 0.001
) -> ColumnBatch:
    """`count` standard-shape messages numbered from `start`, received from `at` on."""
    messages = [
        RawMessage(
            f"device/dev-{i % devices}/telemetry/temperature",
            b'{"value": %d, "unit": "celsius", "timestamp": %d}'
            % (
                i,
                round((at + i * step) * 1000),
            ),
            round((at + (i - start) * step) * SECOND),
        )
        for i in range(start, start + count)
    ]
    return parse_batch(messages)


def test_frame_has_the_canonical_columns_and_dtypes() -> None:
    window = RollingWindow(window_ns=None, max_rows=100)
    window.append(batch(5))
    frame = window.frame()
    assert tuple(frame.columns) == COLUMNS
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert str(frame["received_at"].dtype) == "datetime64[ns, UTC]"
    for name in ("device_id", "sensor_type", "metric", "unit", "value_text"):
        assert isinstance(frame[name].dtype, pd.CategoricalDtype), name
    assert frame["value"].dtype == np.float64
    assert frame["value"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert frame["device_id"].astype(str).tolist() == ["dev-0", "dev-1", "dev-2", "dev-0", "dev-1"]
    assert frame["unit"].astype(str).unique().tolist() == ["celsius"]
    assert frame["value_text"].isna().all()
    assert frame["timestamp"].iloc[1] == pd.Timestamp("2025-12-09T10:30:45.001Z")


def test_empty_store_gives_an_empty_canonical_frame() -> None:
    frame = RollingWindow(window_ns=None, max_rows=10).frame()
    assert frame.empty
    assert tuple(frame.columns) == COLUMNS
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_max_rows_evicts_the_oldest_rows_exactly() -> None:
    window = RollingWindow(window_ns=None, max_rows=250)
    for k in range(10):
        window.append(batch(100, start=k * 100))
    frame = window.frame()
    assert len(frame) == 250
    assert frame["value"].tolist() == [float(v) for v in range(750, 1000)]
    assert window.evicted == 750
    assert window.appended == 1000


def test_window_evicts_by_receive_time() -> None:
    window = RollingWindow(window_ns=10 * SECOND, max_rows=1_000_000)
    window.append(batch(10, at=T0, step=1.0))  # received T0 .. T0+9
    assert window.rows == 10
    evicted = window.evict(int((T0 + 14.5) * SECOND))  # cutoff T0+4.5: drops 0..4
    assert evicted == 5
    assert window.frame()["value"].tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    window.evict(int((T0 + 100) * SECOND))
    assert window.rows == 0
    assert window.frame().empty


def test_memory_stays_bounded_over_many_batches() -> None:
    window = RollingWindow(window_ns=None, max_rows=20_000)
    for k in range(300):
        window.append(batch(500, start=k * 500))
    assert window.rows == 20_000
    # 3 x 8-byte columns + 5 one-byte codes = 29 bytes a row; the unsealed tail uses int32 codes
    assert window.nbytes() <= 20_000 * 45


def test_filters_match_pandas_filtering_of_the_whole_frame() -> None:
    window = RollingWindow(window_ns=None, max_rows=10_000)
    for k in range(5):
        window.append(batch(200, start=k * 200, devices=4))
    everything = window.frame()
    since = everything["received_at"].iloc[300]
    got = window.frame(since_ns=since.value, devices=["dev-1", "dev-3"], metrics=["temperature"])
    expected = everything[
        (everything["received_at"] >= since) & everything["device_id"].isin(["dev-1", "dev-3"])
    ]
    assert got["value"].tolist() == expected["value"].tolist()
    assert window.frame(devices=["nobody"]).empty
    assert window.frame(metrics=["humidity"]).empty


@pytest.mark.parametrize("chunks", [1, 5])
def test_until_and_since_select_by_receive_time_as_pandas_does(chunks: int) -> None:
    window = RollingWindow(window_ns=None, max_rows=10_000)
    for k in range(chunks):
        window.append(batch(1000 // chunks, start=k * (1000 // chunks), devices=4))
    everything = window.frame()
    received = everything["received_at"]
    for low, high in [(0, 999), (100, 101), (250, 250), (0, 0), (999, 999), (400, 900)]:
        since, until = received.iloc[low], received.iloc[high]
        got = window.frame(since_ns=since.value, until_ns=until.value, devices=["dev-2"])
        expected = everything[
            (received >= since) & (received < until) & (everything["device_id"] == "dev-2")
        ]
        assert got["value"].tolist() == expected["value"].tolist(), (low, high)
    assert window.frame(until_ns=received.iloc[0].value).empty


def test_read_gives_the_oldest_receive_time_of_all_rows_with_the_selection() -> None:
    window = RollingWindow(window_ns=10 * SECOND, max_rows=1_000_000)
    empty = window.read()
    assert empty.frame.empty
    assert empty.oldest_received_ns is None
    window.append(batch(10, at=T0, step=1.0, devices=2))  # received T0 .. T0+9
    rows, oldest = window.read(devices=["dev-1"], since_ns=int((T0 + 5) * SECOND))
    assert oldest == round(T0 * SECOND)  # of every row held, not of the selection
    assert rows["value"].tolist() == [5.0, 7.0, 9.0]
    window.evict(int((T0 + 14.5) * SECOND))  # drops T0 .. T0+4
    assert window.read().oldest_received_ns == round((T0 + 5) * SECOND)
    assert window.read(devices=["nobody"]).oldest_received_ns == round((T0 + 5) * SECOND)


def test_text_rows_and_new_categories_after_earlier_chunks() -> None:
    window = RollingWindow(window_ns=None, max_rows=100)
    window.append(batch(2))
    window.append(
        parse_batch(
            [
                RawMessage(
                    "device/late/telemetry/ai", b'{"value": "anomaly"}', round((T0 + 1) * SECOND)
                )
            ]
        )
    )
    frame = window.frame()
    assert frame["device_id"].astype(str).tolist() == ["dev-0", "dev-1", "late"]
    assert frame["value_text"].astype(object).tolist()[-1] == "anomaly"
    assert np.isnan(frame["value"].iloc[-1])


def test_frame_is_cached_until_data_changes_and_owned_by_the_caller() -> None:
    window = RollingWindow(window_ns=None, max_rows=100)
    window.append(batch(3))
    first = window.frame()
    first.loc[0, "value"] = -1.0  # the caller's edit must not reach the window or the cache
    second = window.frame()
    assert second["value"].tolist() == [0.0, 1.0, 2.0]
    version = window.version
    window.append(batch(1, start=3))
    assert window.version != version
    assert window.frame()["value"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_frame_from_another_thread_while_ingesting_is_never_torn() -> None:
    window = RollingWindow(window_ns=None, max_rows=5_000)
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                frame = window.frame()
                values = frame["value"].to_numpy()
                # Rows are numbered in arrival order: any window is a run of consecutive numbers.
                if len(values):
                    assert np.array_equal(values, np.arange(values[0], values[0] + len(values)))
                    assert frame["device_id"].notna().all()
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for k in range(400):
        window.append(batch(50, start=k * 50))
    done.set()
    reader.join()
    assert not errors, errors[0]
    assert window.rows == 5_000


def test_batches_of_hold_just_those_chunks_even_after_eviction() -> None:
    window = RollingWindow(window_ns=None, max_rows=3)
    first = window.append(batch(3))
    second = window.append(batch(2, start=3))
    assert first is not None
    assert second is not None
    (only,) = window.batches_of([second])
    assert only.column("value").to_pylist() == [3.0, 4.0]
    (both,) = window.batches_of([first, second])
    assert both.column("value").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert window.frame()["value"].tolist() == [2.0, 3.0, 4.0]
    assert window.batches_of([]) == []
    assert window.append(parse_batch([])) is None


def test_a_chunk_is_an_arrow_batch_of_the_one_schema_sharing_its_arrays() -> None:
    window = RollingWindow(window_ns=None, max_rows=100)
    chunk = window.append(batch(4))
    assert chunk is not None
    arrow = chunk.to_arrow()
    assert arrow.schema.equals(ARROW_SCHEMA)
    assert arrow.num_rows == 4
    # Times and values are the chunk's own memory, not copies.
    assert arrow.column("timestamp").buffers()[1].address == chunk.timestamp.ctypes.data
    assert arrow.column("received_at").buffers()[1].address == chunk.received.ctypes.data
    assert arrow.column("value").buffers()[1].address == chunk.value.ctypes.data
    assert arrow.column("received_at").cast(pa.int64()).to_pylist() == chunk.received.tolist()
    assert arrow.column("device_id").to_pylist() == ["dev-0", "dev-1", "dev-2", "dev-0"]
    assert arrow.column("unit").dictionary.to_pylist() == ["celsius"]
    assert arrow.column("value_text").null_count == 4
    # The same rows as the frame a user gets.
    frame = window.frame()
    back = pa.Table.from_batches([arrow]).to_pandas()
    pd.testing.assert_frame_equal(back, frame, check_categorical=False)


def test_a_batch_carries_only_the_strings_its_rows_use_and_nan_as_null() -> None:
    window = RollingWindow(window_ns=None, max_rows=100)
    window.append(batch(30, devices=30))  # 30 device names in the dictionary
    text = parse_batch(
        [
            RawMessage("device/late/telemetry/state", b'{"value": "open"}', round(T0 * SECOND)),
            RawMessage("device/late/telemetry/t", b'{"value": 7}', round(T0 * SECOND)),
        ]
    )
    chunk = window.append(text)
    assert chunk is not None
    (arrow,) = window.batches_of([chunk])
    assert arrow.column("device_id").dictionary.to_pylist() == ["late"]
    assert arrow.column("metric").dictionary.to_pylist() == ["state", "t"]
    assert arrow.column("value_text").to_pylist() == ["open", None]
    assert arrow.column("value").to_pylist() == [None, 7.0]  # NaN in the frame, null here
    assert window.frame()["value"].isna().sum() == 1


def test_batches_follow_dictionary_generations_across_a_compaction() -> None:
    # Unique device names fill the dictionary until the window compacts it: chunks handed
    # out before keep the old generation, and a run of chunks per generation is one batch.
    window = RollingWindow(window_ns=None, max_rows=500)
    chunks = []
    for k in range(12):
        chunk = window.append(batch(500, start=k * 500, devices=10**6))
        assert chunk is not None
        chunks.append(chunk)
    assert window.compactions >= 1
    runs = 1 + sum(a.categories is not b.categories for a, b in itertools.pairwise(chunks))
    batches = window.batches_of(chunks)
    assert len(batches) == runs > 1
    table = pa.Table.from_batches(batches).unify_dictionaries()
    assert table.column("value").to_pylist() == [float(v) for v in range(6000)]
    assert table.column("device_id").to_pylist() == [f"dev-{v}" for v in range(6000)]
    for arrow in batches:  # only the names of its own rows, not the generation's
        assert len(arrow.column("device_id").dictionary) == arrow.num_rows


def test_batches_hold_the_rows_of_frame() -> None:
    window = RollingWindow(window_ns=None, max_rows=250)
    assert window.batches() == []
    for k in range(10):
        window.append(batch(100, start=k * 100))
    (held,) = window.batches()
    assert held.num_rows == 250
    back = pa.Table.from_batches([held]).to_pandas()
    pd.testing.assert_frame_equal(back, window.frame(), check_categorical=False)


def test_max_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        RollingWindow(window_ns=None, max_rows=0)
