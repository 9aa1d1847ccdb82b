"""A record's value of one column, in SQL, the same way on SQLite and PostgreSQL.

Records keep their row as one JSON object (``records.data``). Filters, group-bys and
aggregates read one key of it:

- ``as_text``: the value as text. A string is itself; a number is its JSON text (``3``,
  ``3.5``); ``true``/``false`` are those words; JSON null and a missing key are SQL NULL.
  (SQLite's ``json_extract`` would give 1 for true and PostgreSQL's ``->>`` "true": the
  CASE makes both say "true".)
- ``as_number``: the value as a number, or NULL when it is not one. A JSON number counts,
  and so does a string that is a JSON number with blanks around it (``"3"``, ``" -2.5 "``,
  ``"1e3"``; an exponent of at most three digits), since CSV and most workbooks give every
  value as text; anything else (``"abc"``,
  ``"3 kg"``, ``"+3"``, ``"03"``, ``""``, booleans) is NULL, so SUM, MIN, MAX and AVG skip it
  as SQL skips NULL. The grammar is JSON's on both databases: SQLite asks ``json_valid``,
  PostgreSQL matches the same grammar with a regular expression. SQLite computes with
  REAL (double precision), PostgreSQL with NUMERIC; callers turn both into floats.

Column names are bound parameters on PostgreSQL; on SQLite they go into a JSON path
(``$."name"``), which cannot hold a double quote: such names are refused before they get
here (constants.QUERY_COLUMN_PATTERN).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, Numeric, Text, and_, case, cast, func, literal
from sqlalchemy.sql.elements import ColumnElement

from backend.db.models import Record

# JSON's number grammar, with the blanks JSON allows around a value, and an exponent of at
# most three digits: PostgreSQL's NUMERIC refuses "1e999999" with an error that would fail
# the whole report, so such a string is no number on either database.
LONG_EXPONENT = "*[eE]*[0-9][0-9][0-9][0-9]*"  # SQLite GLOB: an exponent of 4+ digits
JSON_NUMBER_RE = r"^[ \t\n\r]*-?(0|[1-9][0-9]*)([.][0-9]+)?([eE][+-]?[0-9]{1,3})?[ \t\n\r]*$"


class JsonValues:
    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgresql"

    def _path(self, column: str) -> Any:
        if '"' in column:
            raise ValueError(f"column names with a double quote cannot be queried: {column!r}")
        return literal(f'$."{column}"')

    def as_text(self, column: str) -> ColumnElement[Any]:
        if self.postgres:
            text: ColumnElement[Any] = Record.data[column].as_string()
            return text
        kind = func.json_type(Record.data, self._path(column))
        return case(
            (kind == "true", "true"),
            (kind == "false", "false"),
            else_=cast(func.json_extract(Record.data, self._path(column)), Text),
        )

    def as_number(self, column: str) -> ColumnElement[Any]:
        if self.postgres:
            kind = func.jsonb_typeof(Record.data[column])
            text = Record.data[column].as_string()
            return case(
                (kind == "number", cast(text, Numeric)),
                (and_(kind == "string", text.regexp_match(JSON_NUMBER_RE)), cast(text, Numeric)),
            )
        kind = func.json_type(Record.data, self._path(column))
        value = func.json_extract(Record.data, self._path(column))
        # SQLite evaluates CASE lazily, so json_type never sees text json_valid refused
        # (it would raise "malformed JSON").
        text_number = case(
            (
                and_(func.json_valid(value) == 1, value.op("NOT GLOB")(LONG_EXPONENT)),
                case((func.json_type(value).in_(["integer", "real"]), cast(value, Float))),
            )
        )
        return case(
            (kind.in_(["integer", "real"]), cast(value, Float)),
            (kind == "text", text_number),
        )

    def matches(self, column: str, value: Any) -> ColumnElement[bool]:
        """A filter's condition: the column's text equals the value's (see ``as_text``);
        None matches a missing key or JSON null."""
        expression = self.as_text(column)
        if value is None:
            return expression.is_(None)
        return expression == filter_text(value)


def filter_text(value: Any) -> str:
    """A filter value as ``as_text`` gives the stored one."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
