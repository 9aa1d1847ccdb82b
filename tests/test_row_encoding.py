"""How a synced row is keyed, digested and encoded (backend/db/rows.py; issue 14: orjson
and xxhash on the hot path, lists instead of dicts for CSV and XLSX rows). Keys must keep
the spelling the records stored so far were keyed by, or a re-sync after an upgrade would
insert every row of a multi-column dataset a second time."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from backend.db.rows import NotUnicode, PreparedRow, RowShape, dumps, record_key
from backend.files import readers


def old_key(values: list[str]) -> str:
    return json.dumps(values, ensure_ascii=False)


def random_text(rng: random.Random) -> str:
    pick = [(0, 0x7F), (0x80, 0xD7FF), (0xE000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(pick))) for _ in range(rng.randint(0, 8)))


def test_keys_are_spelt_as_before_for_any_text_and_any_number_of_columns() -> None:
    rng = random.Random(14)
    for _ in range(20_000):
        values = [random_text(rng) for _ in range(rng.randint(1, 3))]
        assert record_key(values) == old_key(values)
    assert record_key(["7", "8"]) == '["7", "8"]'
    assert record_key(['a"b\\c\n']) == old_key(['a"b\\c\n'])


def test_a_row_holding_a_lone_surrogate_is_rejected_whichever_column_holds_it() -> None:
    """PostgreSQL's jsonb refuses even the escape (``"\\ud800"``), so no database gets it."""
    shape = RowShape(["sku", "name"], ["sku"])
    rows = [
        (2, ["A1\ud800", "x"]),  # in the key
        (3, ["A2", "x\udc80"]),  # in a value
        (4, {"sku": "A3", "name": "x\ud800"}),  # a JSON line's escape
        (5, {"sku": "A4", "n\ud800": "x"}),  # a JSON line's name
        (6, ["A5", "fine"]),
    ]
    batch = shape.next_batch(iter(rows), 10)
    assert [r.key for r in batch.rows] == ['["A5"]']
    assert [n for n, _ in batch.rejected] == [2, 3, 4, 5]
    assert all("lone surrogate" in reason for _, reason in batch.rejected)
    with pytest.raises(NotUnicode):
        record_key(["x\ud800"])


def test_a_row_wider_than_the_header_is_rejected_not_a_crash() -> None:
    batch = RowShape(["sku"], ["sku"]).next_batch(iter([(2, ["A1", "extra"])]), 10)
    assert (batch.rows, batch.rejected) == ([], [(2, "2 values, but the header names 1")])


def test_a_list_row_and_a_dict_row_with_the_same_values_are_the_same_record() -> None:
    shape = RowShape(["sku", "name", "qty"], ["sku"])
    from_list = shape.next_batch(iter([(2, ["A1", "苹果", 3])]), 10).rows[0]
    from_dict = shape.next_batch(iter([(2, {"sku": "A1", "name": "苹果", "qty": 3})]), 10).rows[0]
    assert from_list.key == from_dict.key == '["A1"]'
    assert from_list.row_hash == from_dict.row_hash
    assert len(from_list.row_hash) == 32  # fits records.row_hash (VARCHAR(32))
    assert from_list.data_json() == from_dict.data_json() == '{"sku":"A1","name":"苹果","qty":3}'


def test_json_lines_keyed_by_two_columns_and_holding_what_orjson_refuses() -> None:
    shape = RowShape(["sku", "n", "qty"], ["qty", "sku"])
    rows = [
        (2, {"sku": " A1 ", "n": 2**70, "qty": 3}),
        (3, {"sku": "B2", "n": 1}),
        (4, [" A1 ", 2**70, 3]),
    ]
    batch = shape.next_batch(iter(rows), 10)
    assert [r.key for r in batch.rows] == ['["3", "A1"]', '["3", "A1"]']
    assert batch.rows[0].row_hash == batch.rows[1].row_hash
    assert batch.rejected == [(3, "missing key column value: qty")]


def test_the_digest_changes_with_any_value_or_column_name() -> None:
    shape = RowShape(["sku", "name", "qty"], ["sku"])
    rows = [["A1", "apple", "3"], ["A1", "apple", "4"], ["A1", "apple3", ""], ["A1", "apple"]]
    digests = {r.row_hash for r in shape.next_batch(iter(enumerate(rows)), 10).rows}
    assert len(digests) == 4
    renamed = RowShape(["sku", "title", "qty"], ["sku"])
    assert renamed.next_batch(iter([(2, rows[0])]), 1).rows[0].row_hash not in digests


def test_a_short_row_keeps_the_columns_it_has_and_a_missing_key_is_a_rejected_row() -> None:
    shape = RowShape(["sku", "name", "qty"], ["qty", "sku"])
    batch = shape.next_batch(
        iter([(2, ["A1", "apple"]), (3, [" B2 ", "pear", " 5 "]), (4, "unreadable")]), 10
    )
    assert batch.read == 3
    assert [r.key for r in batch.rows] == ['["5", "B2"]']
    assert batch.rows[0].data_json() == '{"sku":" B2 ","name":"pear","qty":" 5 "}'
    assert batch.rejected == [(2, "missing key column value: qty"), (4, "unreadable")]
    assert PreparedRow("k", "h", ["A1"], ["sku", "name"]).data_json() == '{"sku":"A1"}'


def test_what_orjson_refuses_is_still_encoded() -> None:
    huge = {"n": 2**70, "nested": [[[1]]]}
    assert json.loads(dumps(huge)) == huge
    assert dumps({"é": 2**70}).decode() == '{"é":1180591620717411303424}'
    deep: object = 1
    for _ in range(300):  # past orjson's nesting limit
        deep = [deep]
    assert json.loads(dumps({"d": deep})) == {"d": deep}
    assert PreparedRow('["1"]', "", {"d": deep}).data_json() == dumps({"d": deep}).decode()


def test_json_lines_holding_nan_or_infinity_are_rejected_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(
        '{"id": 1, "x": 1.5}\n{"id": 2, "x": NaN}\n{"id": 3, "x": -Infinity}\n{"id": 4}\n'
    )
    info = readers.inspect(path, "jsonl")
    rows = list(readers.iter_rows(path, info))
    assert rows[0] == (1, {"id": 1, "x": 1.5})
    assert rows[1][0] == 2 and "NaN is not a JSON value" in str(rows[1][1])
    assert rows[2][0] == 3 and "-Infinity is not a JSON value" in str(rows[2][1])
    assert rows[3] == (4, {"id": 4})


def test_json_lines_read_exactly_as_json_reads_them_even_where_orjson_would_not(
    tmp_path: Path,
) -> None:
    """Lines are read by orjson where it agrees with json, and by json elsewhere: a number
    past 64 bits stays an exact integer (at the top or nested), -0 stays the integer 0,
    1e400 is json's infinity, a duplicate key keeps its last value, nesting past orjson's
    writer is still read and stored, past json's reader still rejected, and a lone
    surrogate's escape still reaches the row's check. Compared by ``repr``: 0, 0.0, -0.0
    and False are all equal under ``==``."""
    deep, deeper = "[" * 300 + "]" * 300, "[" * 2000 + "]" * 2000
    lines = [
        '{"id": 1, "big": 123456789012345678901234567890, "neg": -9223372036854775809}',
        '{"id": 2, "x": 1e400, "y": -0.0, "z": 18446744073709551615, "w": 1e-400}',
        '{"id": 3, "a": 1, "a": 2, "note": "\\u00e9 \\u0000 \\/"}',
        '{"id": 4, "s": "\\ud800"}',
        '{"id": 5, "n": [1, {"b": null}], "f": 1.1000000000000001, "e": 1E2, "m": -0}',
        '{"id": "1234567890123456789012", "l": [1.5, [18446744073709551616], -0]}',
        '{"id": 7, "t": true, "u": false, "v": 1.0, "i": 9223372036854775807}',
        '{"id": 8, "deep": ' + deep + "}",
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join([*lines, '{"id": 9, "deeper": ' + deeper + "}"]) + "\n")
    rows = list(readers.iter_rows(path, readers.inspect(path, "jsonl")))
    assert repr(rows[:-1]) == repr([(n, json.loads(line)) for n, line in enumerate(lines, 1)])
    assert rows[-1][0] == 9 and "nested too deeply" in str(rows[-1][1])
    batch = RowShape([], ["id"]).next_batch(iter(rows[:-1]), 10)
    assert [n for n, _ in batch.rejected] == [4]  # the lone surrogate
    stored = next(r for r in batch.rows if r.key == '["8"]')
    assert json.loads(stored.data_json()) == json.loads(lines[7])


TRICKY_LINES = [
    b'{"id": 1, "s": "plain"}\r\n',  # a Windows line end
    b'{"id": 2, "n": 1.5, "l": [1, 2]}\n',  # not flat and exact: json's way
    b"   \t\n",  # blank by ASCII's whitespace
    "\u3000\x1c\n".encode(),  # blank by str.strip's whitespace only
    b'{"id": 3, "big": 123456789012345678901234567890}\n',
    b'{"id": 4, "bad": }\r\n',  # json's message, its position counted without the \r
    b"[1, 2]\n",
    b'{"id": 5, "v": "\xe6\xb1\x89\xe5\xad\x97"}\n',  # CJK: 3 bytes a character
]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"", id="only-lines-the-bytes-path-reads"),
        pytest.param(b'{"id": 6}\r{"id": 7}\n{"id": 8}\n', id="a-bare-carriage-return"),
        pytest.param(
            b'{"id": 6, "v": "' + "\u6c49".encode() * 30 + b'"}\n{"id": 7}\n',
            id="more-bytes-than-the-limit-but-fewer-characters",
        ),
        pytest.param(
            b'{"id": 6, "v": "' + b"x" * 100 + b'"}\n{"id": 7}\n',
            id="more-characters-than-the-limit",
        ),
        pytest.param(b'{"id": 6}\r', id="a-carriage-return-at-the-end"),
    ],
)
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["no-bom", "bom"])
def test_utf8_json_lines_read_as_bytes_give_what_the_text_reader_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: bytes, bom: bytes
) -> None:
    """UTF-8 JSON Lines are read as bytes (orjson reads bytes faster than text), which
    must give the rows, row numbers and messages of the text reader: each line it cannot
    read the same way goes to the text path, and from a line longer than the limit in
    bytes, or with a carriage return the text reader breaks at, the rest of the file does."""
    monkeypatch.setattr(readers, "MAX_ROW_CHARS", 64)
    path = tmp_path / "rows.jsonl"
    path.write_bytes(bom + b"".join(TRICKY_LINES) + tail)
    info = readers.inspect(path, "jsonl")
    assert info.encoding == "utf-8-sig"
    rows = list(readers.iter_rows(path, info))
    assert repr(rows) == repr(list(readers._jsonl_text_rows(path, info.encoding)))
    assert [n for n, _ in rows][:6] == [1, 2, 5, 6, 7, 8]
    assert rows[3][1].startswith("invalid JSON: Expecting value: line 1 column 18 (char 17)")
    if b"x" * 100 in tail:
        assert rows[-2] == (9, "the row is 119 characters long; at most 64 are read")
        assert rows[-1] == (10, {"id": 7})
    if "\u6c49".encode() in tail:
        assert rows[-2][0] == 9 and len(rows[-2][1]["v"]) == 30
    if tail.startswith(b'{"id": 6}\r{'):
        assert rows[-3:] == [(9, {"id": 6}), (10, {"id": 7}), (11, {"id": 8})]


def test_gb18030_json_lines_are_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes('{"id": 1, "city": "上海"}\n{"id": 2, "city": "北京"}\n'.encode("gb18030"))
    info = readers.inspect(path, "jsonl")
    assert info.encoding == "gb18030"
    assert list(readers.iter_rows(path, info)) == [
        (1, {"id": 1, "city": "上海"}),
        (2, {"id": 2, "city": "北京"}),
    ]


def test_a_row_nested_too_deeply_to_store_is_rejected_not_a_failed_sync() -> None:
    deep: list[object] = []
    for _ in range(50_000):
        deep = [deep]
    batch = RowShape([], ["id"]).next_batch(iter([(2, {"id": 1, "d": deep}), (3, {"id": 2})]), 10)
    assert batch.rejected == [(2, "the row is nested too deeply to store")]
    assert [r.key for r in batch.rows] == ['["2"]']


def test_a_batch_ends_at_its_row_count_or_its_byte_budget_whichever_comes_first() -> None:
    wide = "x" * 1000
    rows = iter([(n, [str(n), wide]) for n in range(2, 102)])
    shape = RowShape(["id", "blob"], ["id"])
    by_bytes = shape.next_batch(rows, 50, max_bytes=10_000)
    assert by_bytes.read == len(by_bytes.rows) == 10  # ~1 KB of JSON each
    by_count = shape.next_batch(rows, 5, max_bytes=10_000)
    assert [r.key for r in by_count.rows] == [f'["{n}"]' for n in range(12, 17)]
    dicts = iter([(n, {"id": n, "blob": wide}) for n in range(1, 21)])
    assert shape.next_batch(dicts, 50, max_bytes=5_000).read == 5
    assert shape.next_batch(iter([]), 50).read == 0
