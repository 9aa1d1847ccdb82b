"""How a synced row is keyed, encoded and digested (issue 14: orjson and xxhash on the hot
path). Keys must keep the spelling the records stored so far were keyed by, or a re-sync
after an upgrade would insert every row of a multi-column dataset a second time."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson

from backend.db.queries.data_sync import PreparedRow, record_key
from backend.files import readers


def old_key(values: list[str]) -> str:
    return json.dumps(values, ensure_ascii=False)


def encode_row(data: dict[str, object]) -> bytes:
    return PreparedRow.of("", data).data_json.encode()


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


def test_a_key_with_a_lone_surrogate_is_stored_escaped() -> None:
    assert record_key(["x\ud800"]) == '["x\\ud800"]'
    assert record_key(["é", "x\ud800"]) == '["é", "x\\ud800"]'


def test_a_row_is_compact_json_and_its_digest_follows_its_text() -> None:
    row = {"sku": "A1", "name": "苹果", "qty": 3}
    prepared = PreparedRow.of('["A1"]', row)
    assert json.loads(prepared.data_json) == row
    assert prepared.data_json == '{"sku":"A1","name":"苹果","qty":3}'
    assert len(prepared.row_hash) == 32  # fits records.row_hash (VARCHAR(32))
    assert PreparedRow.of('["A1"]', dict(row)).row_hash == prepared.row_hash
    assert PreparedRow.of('["A1"]', row | {"qty": 4}).row_hash != prepared.row_hash


def test_what_orjson_refuses_is_still_encoded() -> None:
    huge = {"n": 2**70, "nested": [[[1]]]}
    assert json.loads(encode_row(huge)) == huge
    surrogate = {"s": "x\udc80"}
    text = encode_row(surrogate).decode()  # valid UTF-8, the surrogate escaped
    assert json.loads(text) == surrogate
    deep: object = 1
    for _ in range(300):  # past orjson's nesting limit
        deep = [deep]
    assert json.loads(encode_row({"d": deep})) == {"d": deep}
    assert orjson.dumps({"a": 1}) == encode_row({"a": 1})


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
