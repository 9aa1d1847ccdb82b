"""Field types shared by the request models, each written so that what the OpenAPI
schema says is exactly what the API accepts (the fuzzing tests hold both to it)."""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator


def _json_integer(value: Any) -> Any:
    """A JSON integer: ``5`` or ``5.0`` (JSON Schema counts both), never ``true`` or
    ``"5"``, which lax validation would quietly turn into numbers."""
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON integer")
    return value


# After the constraints: ``Annotated[int, Field(ge=1), JSON_INTEGER]`` (after a validator,
# constraints would no longer reach the OpenAPI schema as minimum and maximum).
JSON_INTEGER = BeforeValidator(_json_integer)


def storable(value: str) -> str:
    """Text the databases can store: no NUL (PostgreSQL refuses it) and no unpaired
    surrogates (not Unicode; Python's JSON parser lets ``"\\ud800"`` through)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no unpaired surrogates)") from None
    return value


# For the schema: a string with no NUL in it.
NO_NUL: dict[str, Any] = {"not": {"pattern": "\x00"}}

# Some character that is neither whitespace nor an information separator (which Python's
# str.isspace counts as whitespace, and Unicode does not): a text that is not blank.
NOT_BLANK = r"[^\s\x1c-\x1f]"
