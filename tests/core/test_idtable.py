"""The operation-id table's storage: the C table (`ledger/_idtable.c`) and its Python stand-in
keep the same entries in the same order, against a plain model, through the cap, the window,
chunk turnover and index growth."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import quotaflow
from quotaflow.ledger._opids import OperationIds, PyIdTable

try:
    from quotaflow.ledger._idtable import IdTable
except ImportError:  # an interpreted install: only the stand-in exists
    IdTable = None

KINDS = ["python"] + (["c"] if IdTable is not None else [])


def make(kind: str, entries_max: int) -> Any:
    return IdTable(entries_max) if kind == "c" else PyIdTable(entries_max)


def test_the_compiled_build_keeps_ids_in_the_c_table() -> None:
    if os.environ.get("QUOTAFLOW_NATIVE") == "0" or quotaflow.NATIVE_MODE != "compiled":
        assert type(OperationIds(5).storage) is PyIdTable
        return
    assert IdTable is not None
    assert type(OperationIds(5).storage) is IdTable


ids = st.text(min_size=1, max_size=40)  # any str, surrogates included
answers = st.one_of(
    st.text(max_size=300),  # kept as text (JSON in the ledger, any str here)
    # UTF-8 (orjson's output in the ledger): kept as text, given back as str
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=300).map(str.encode),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),  # kept as the object
)


def kept(answer: Any) -> Any:
    return answer.decode() if isinstance(answer, bytes) else answer


fingerprints = st.binary(min_size=16, max_size=17)
ops = st.sampled_from(["topup", "reserve", "commit", None])


class Model(RuleBasedStateMachine):
    """Both tables against a list of (id, op, fingerprint, answer, at) oldest first."""

    @initialize(entries_max=st.integers(0, 40))
    def start(self, entries_max: int) -> None:
        self.entries_max = entries_max
        self.model: list[tuple[str, str | None, bytes, Any, int]] = []
        self.clock = 1_000
        self.added = 0  # ids added: the next one's number
        self.numbers: list[int] = []  # each model row's
        self.tables = {kind: make(kind, entries_max) for kind in KINDS}

    @rule(op_id=ids, op=ops, fp=fingerprints, answer=answers, step=st.integers(0, 3))
    def add(self, op_id: str, op: str | None, fp: bytes, answer: Any, step: int) -> None:
        self.clock += step
        known = any(row[0] == op_id for row in self.model)
        for table in self.tables.values():
            if known:
                with pytest.raises(KeyError):
                    table.add(op_id, op, fp, answer, self.clock)
            else:
                table.add(op_id, op, fp, answer, self.clock)
        if not known:
            self.model.append((op_id, op, fp, kept(answer), self.clock))
            self.numbers.append(self.added)
            self.added += 1
            cut = max(0, len(self.model) - self.entries_max)
            del self.model[:cut]
            del self.numbers[:cut]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def repeat_of_a_live_id(self, data: st.DataObject) -> None:
        op_id, op, fp, answer, _ = data.draw(st.sampled_from(self.model))
        for table in self.tables.values():
            assert table.get(op_id) == (op, fp, answer)
            with pytest.raises(KeyError):
                table.add(op_id, op, fp, answer, self.clock)

    @rule(op_id=ids)
    def get(self, op_id: str) -> None:
        want = next(((o, f, a) for i, o, f, a, _ in self.model if i == op_id), None)
        for table in self.tables.values():
            assert table.get(op_id) == want

    @rule(op_id=ids)
    def prefetch(self, op_id: str) -> None:
        """A hint only: it answers nothing and changes nothing (the invariant checks)."""
        for table in self.tables.values():
            assert table.prefetch(op_id) is None

    @rule(back=st.integers(-2, 6))
    def prune(self, back: int) -> None:
        horizon = self.clock - back
        keep = 0
        while keep < len(self.model) and self.model[keep][4] < horizon:
            keep += 1
        for table in self.tables.values():
            assert table.prune(horizon) == keep
        del self.model[:keep]
        del self.numbers[:keep]

    @rule(data=st.data())
    def rows_from(self, data: st.DataObject) -> None:
        """The rows numbered `start` or later (a snapshot's segment)."""
        start = data.draw(st.integers(-1, self.added + 2))
        want = [row for row, n in zip(self.model, self.numbers, strict=True) if n >= start]
        for table in self.tables.values():
            assert table.rows(start) == want

    @rule(more=st.integers(-3, 5))
    def renumber(self, more: int) -> None:
        """A restored table numbered on from where its snapshot's ids ended."""
        added = self.added + more
        for table in self.tables.values():
            if added < len(self.model):
                with pytest.raises(ValueError, match="less than the ids kept"):
                    table.added = added
            else:
                table.added = added
        if added >= len(self.model):
            shift = added - self.added
            self.numbers = [n + shift for n in self.numbers]
            self.added = added

    @invariant()
    def same_entries_in_the_same_order(self) -> None:
        for table in self.tables.values():
            assert len(table) == len(self.model)
            assert table.ids() == [row[0] for row in self.model]
            assert table.rows() == self.model
            assert table.entries_max == self.entries_max
            assert table.added == self.added


TestModel = Model.TestCase
TestModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@pytest.mark.parametrize("kind", KINDS)
def test_many_ids_across_chunks_index_growth_and_the_cap(kind: str) -> None:
    """Enough ids to fill many chunks and grow the index several times, with answers of every
    size (one larger than a chunk); each live id is found, each forgotten one is not, in
    order, while the cap and the window turn the table over."""
    # The C table's index jumps to its cap's size when it first fills; a small presize makes
    # it double the whole way.
    table = IdTable(30_000, presized_slots_max=1024) if kind == "c" else make(kind, 30_000)
    big = "x" * (3 << 20)  # bigger than a chunk: a chunk of its own
    for i in range(100_000):
        answer = big if i == 50_000 else f'{{"n":{i},"pad":"{"y" * (i % 200)}"}}'
        table.add(f"op-{i}", "topup", i.to_bytes(16, "big"), answer, 1_000 + i // 10)
    if kind == "c":
        assert table.index_slots == 65_536  # grew six times: 30,001 ids at most 5/8 full
    assert len(table) == 30_000
    assert table.get("op-69999") is None
    assert table.get("op-70000") == ("topup", (70_000).to_bytes(16, "big"), '{"n":70000,"pad":""}')
    live = table.ids()
    assert live == [f"op-{i}" for i in range(70_000, 100_000)]
    assert all(table.get(op_id) is not None for op_id in live[::97])
    assert table.prune(1_000 + 9_000) == 20_000
    assert table.ids()[0] == "op-90000" and len(table) == 10_000
    assert table.get("op-89999") is None and table.get("op-95000") is not None
    assert table.prune(10**12) == 10_000 and len(table) == 0 and table.rows() == []
    table.add("again", None, bytes(17), "", 5)  # reuses the emptied chunk
    assert table.rows() == [("again", None, bytes(17), "", 5)]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_arguments_are_refused_and_change_nothing(kind: str) -> None:
    table = make(kind, 10)
    table.add("a", "topup", bytes(16), "{}", 1)
    if kind == "c":  # the C table checks types the ledger's callers already guarantee
        with pytest.raises(TypeError):
            table.add(7, "topup", bytes(16), "{}", 1)
        with pytest.raises(ValueError):
            table.add("b", "topup", bytes(18), "{}", 1)
        with pytest.raises(TypeError):
            table.add("b", b"topup", bytes(16), "{}", 1)
        with pytest.raises(TypeError):
            table.get(7)
    with pytest.raises(KeyError):
        table.add("a", "topup", bytes(16), "{}", 1)
    with pytest.raises(ValueError):
        make(kind, -1)
    assert table.rows() == [("a", "topup", bytes(16), "{}", 1)]


results = st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3)


@given(
    st.lists(
        st.tuples(ids, st.one_of(results, results.map(lambda r: orjson.dumps(r).decode()))),
        min_size=1,
        max_size=30,
        unique_by=lambda row: row[0],
    )
)
@settings(max_examples=60, deadline=None)
def test_snapshot_rows_restore_through_either_table(rows: list[tuple[str, Any]]) -> None:
    """Both tables write the same snapshot rows, and those rows restore into either."""
    dumped = []
    for kind in KINDS:
        table = OperationIds(100, make(kind, 100))
        for i, (op_id, answer) in enumerate(rows):
            table.add(op_id, "topup", bytes([i]) * 16, answer, 1_000 + i)
        dumped.append(table.to_json())
    assert all(d == dumped[0] for d in dumped)
    restored = OperationIds.from_json(dumped[0], 100).storage.rows()
    for kind in KINDS:
        again = OperationIds(100, make(kind, 100))
        for row in restored:
            again.storage.add(*row)
        assert again.to_json() == dumped[0]


@pytest.mark.parametrize("kind", KINDS)
def test_a_collection_that_prunes_during_rows_does_not_cut_the_walk(kind: str) -> None:
    """Making a row may start a collection (CPython 3.11 collects inside allocations), and a
    callback or finalizer run by it may prune the table: the walk must not go on over the
    chunks that freed."""
    table = make(kind, 100)
    table.add("n", "topup", bytes(16), "{}", 1)
    table.add("big", "topup", bytes(16), "x" * (2 << 20), 1)  # a chunk of its own
    for i in range(5):
        table.add(f"n{i}", "topup", bytes(16), "{}", 2)
    want = [row[0] for row in table.rows()]
    calls: list[int] = []

    def prune_on_second_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            calls.append(1)
            if len(calls) == 2:
                table.prune(10**12)

    gc.collect()
    threshold = gc.get_threshold()
    gc.callbacks.append(prune_on_second_collection)
    gc.set_threshold(1)
    try:
        rows = table.rows()
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(prune_on_second_collection)
    assert [row[0] for row in rows] == want
    assert rows[1][3] == "x" * (2 << 20)


def test_a_finalizer_that_prunes_during_get_leaves_the_answer_whole() -> None:
    """The C table's get makes a tuple, which may start a collection. (The Python table's
    returns the tuple it keeps: nothing to collect inside it.)"""
    assert IdTable is not None, "the C table is built wherever the tests run (scripts/test.sh)"
    table = IdTable(100)
    table.add("big", "topup", bytes(16), "x" * (2 << 20), 1)  # a chunk of its own
    table.add("next", "topup", bytes(16), "{}", 2)

    class Pruner:
        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            table.prune(10**12)  # forgets "big": its chunk is freed

    gc.collect()
    threshold = gc.get_threshold()
    gc.disable()
    Pruner()  # garbage in a cycle, with a finalizer
    gc.set_threshold(1)
    gc.enable()
    try:
        entry = table.get("big")  # making its tuple collects: the finalizer prunes
    finally:
        gc.set_threshold(*threshold)
    # the finalizer ran inside the get (before it the answer would be None, after it the
    # table would still hold two ids), and the answer came out whole
    assert entry == ("topup", bytes(16), "x" * (2 << 20)) and len(table) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_refused_adds_leave_no_operation_name_behind(kind: str) -> None:
    """The C table numbers operation names (at most 65,535): a refused add must not use one."""
    table = make(kind, 10)
    table.add("a", "x", bytes(16), "", 1)
    for i in range(65_600):
        with pytest.raises(KeyError):
            table.add("a", f"op{i}", bytes(16), "", 1)
    table.add("b", "topup", bytes(16), "", 1)
    assert table.ids() == ["a", "b"]


@pytest.mark.skipif(IdTable is None, reason="the C table is not built (interpreted install)")
def test_the_index_grows_once_to_what_its_cap_needs() -> None:
    """Doubling the index rehashes every id at once (54 ms at 1.3 million ids, every answer
    held meanwhile): the first time it fills, it goes straight to the size its cap needs (at
    most 5/8 full), so it never grows again; a table that keeps few ids stays small."""
    assert IdTable is not None

    def filled(entries_max: int, ids: int, **kwargs: int) -> int:
        table = IdTable(entries_max, **kwargs)
        for i in range(ids):
            table.add(f"op-{i}", "charge", bytes(16), "{}", i)
        return table.index_slots

    assert IdTable(2_000_000).index_slots == 1024  # small until it fills
    assert filled(2_000_000, 640) == 1024 and filled(2_000_000, 641) == 1 << 22
    assert filled(640, 5_000) == 2048 and filled(0, 10) == 1024
    assert filled(10**12, 641) == 1 << 25  # the most it jumps to; past it, it doubles
    assert filled(5_000, 641) == 8192 and filled(5_000, 20_000) == 8192
    with pytest.raises(ValueError, match="presized_slots_max"):
        IdTable(5, presized_slots_max=10)


plain_text = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30)
dumped_entries = st.lists(
    st.tuples(
        plain_text,  # ids with quotes, backslashes, control and non-BMP characters
        st.sampled_from(["charge", 'a "quoted"\\name', "t\u00e9l\u00e9", None]),
        st.binary(min_size=16, max_size=17),  # this release's, or restored with a prefix
        st.one_of(results.map(orjson.dumps), results),  # kept as text (JSON), or as the object
    ),
    max_size=25,
    unique_by=lambda e: e[0],
)


@pytest.mark.parametrize("kind", KINDS)
@given(entries=dumped_entries, entries_max=st.integers(1, 30), data=st.data())
@settings(max_examples=150, deadline=None)
def test_dump_writes_the_rows_of_to_json(
    kind: str,
    entries: list[tuple[str, str | None, bytes, Any]],
    entries_max: int,
    data: st.DataObject,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A snapshot's ids file, written by the C table from its records (by the stand-in through
    to_json), reads back as to_json's rows of the same ids."""
    ids = OperationIds(entries_max, storage=make(kind, entries_max))
    for i, (op_id, op, fp, answer) in enumerate(entries):
        ids.add(op_id, op, fp, answer, 1_000 + i)
    head, end = ids.span()
    start = data.draw(st.integers(head - 2, end + 2))
    path = tmp_path_factory.mktemp("dump") / "ids.json"
    with open(path, "wb") as f:
        count = ids.dump(start, f.fileno())
    expected = ids.to_json(False, start)
    assert orjson.loads(path.read_bytes()) == expected
    assert count == len(expected) == max(0, end - max(start, head))


@pytest.mark.parametrize("kind", KINDS)
def test_dump_refuses_an_id_json_cannot_hold(kind: str, tmp_path: Path) -> None:
    ids = OperationIds(10, storage=make(kind, 10))
    ids.add("fine", "charge", bytes(16), b"{}", 1)
    ids.add("lone \udc80 surrogate", "charge", bytes(16), b"{}", 2)
    path = tmp_path / "ids.json"
    refusal: Any = (
        pytest.raises(ValueError, match="not valid UTF-8")
        if kind == "c"
        else pytest.raises(orjson.JSONEncodeError, match="surrogates not allowed")
    )
    with open(path, "wb") as f, refusal:
        ids.dump(0, f.fileno())
    with open(path, "wb") as f:  # the ids after it: none
        assert ids.dump(2, f.fileno()) == 0
    assert path.read_bytes() == b"[]"
