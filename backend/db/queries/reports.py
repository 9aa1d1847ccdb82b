"""A report in one query: group a dataset's records by some columns and aggregate others,
in SQL over the JSON column, the same on SQLite and PostgreSQL (db/queries/json_values.py
says how a value is read as text and as a number)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from backend.db.models import Record
from backend.db.queries.json_values import JsonValues


class ReportTooLarge(Exception):
    def __init__(self, groups: int, limit: int) -> None:
        super().__init__(
            f"the report passes {limit:,} bytes as JSON (MAX_RESULT_BYTES) by its group "
            f"{groups:,}: group by fewer or shorter columns"
        )


AGGREGATES: dict[str, Callable[[Any], ColumnElement[Any]]] = {
    "sum": func.sum,
    "min": func.min,
    "max": func.max,
    "avg": func.avg,
}


async def aggregate(
    session: AsyncSession,
    *,
    dataset: str,
    group_by: Sequence[str],
    aggregates: Sequence[tuple[str, str | None]],
    limit: int,
    max_bytes: int,
) -> list[list[Any]]:
    """One row per group (at most ``limit``): the group's values as text, then each
    aggregate ((op, column); count with no column counts records).

    Groups are read as a stream and measured as they come: a group value can be a whole
    field (MAX_FIELD_BYTES), so ``limit`` groups alone could hold gigabytes before the
    result's size check. Past ``max_bytes`` of JSON it raises ReportTooLarge at once."""
    values = JsonValues(session.get_bind().dialect.name)
    inner = [values.as_text(c).label(f"g{i}") for i, c in enumerate(group_by)]
    for i, (op, column) in enumerate(aggregates):
        if column is not None:
            read = values.as_text(column) if op == "count" else values.as_number(column)
            inner.append(read.label(f"a{i}"))
    if not inner:
        inner.append(literal(1).label("one"))
    records = select(*inner).where(Record.dataset == dataset).subquery()
    groups = [records.c[f"g{i}"] for i in range(len(group_by))]
    outputs: list[ColumnElement[Any]] = []
    for i, (op, column) in enumerate(aggregates):
        if column is None:
            outputs.append(func.count())
        elif op == "count":
            outputs.append(func.count(records.c[f"a{i}"]))
        else:
            outputs.append(AGGREGATES[op](records.c[f"a{i}"]))
    query = select(*groups, *outputs).select_from(records)
    if groups:
        query = query.group_by(*groups)
    rows: list[Any] = []
    size = 0
    stream = await session.stream(query.limit(limit), execution_options={"yield_per": 500})
    async for row in stream:
        size += len(json.dumps([str(v) for v in row])) + 1  # as the ledger will store it
        if size > max_bytes:
            await stream.close()
            raise ReportTooLarge(len(rows) + 1, max_bytes)
        rows.append(row)
    width = len(groups)
    return [
        [*row[:width], *(_number(v) for v in row[width:])]
        for row in sorted(rows, key=lambda r: tuple((v is not None, v or "") for v in r[:width]))
    ]


def _number(value: Any) -> Any:
    """NUMERIC (PostgreSQL) and REAL (SQLite) alike as JSON numbers: a whole number as an
    integer (when a double holds it exactly), else a float."""
    if value is None or isinstance(value, int):
        return value
    number = float(value) if isinstance(value, Decimal) else value
    if isinstance(number, float) and math.isfinite(number):
        if number.is_integer() and abs(number) < 2**53:
            return int(number)
        return number
    return None if isinstance(number, float) else number
