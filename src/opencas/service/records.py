"""Typed access to the JSON records the CAS keeps in its encrypted store.

Every record is a JSON object encoded as UTF-8. A record whose JSON (or shape) is wrong after it
decrypted correctly can only come from a bug or a foreign writer holding the database key; it is
reported as damaged, naming its table and key, like a record that failed to decrypt.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from opencas.errors import RecordDamagedError
from opencas.store.base import Reader, Transaction

M = TypeVar("M", bound=BaseModel)


def encode_record(model: BaseModel) -> bytes:
    """The stored bytes of ``model``: its JSON form."""
    return model.model_dump_json().encode("utf-8")


def decode_record(model_type: type[M], table: str, key: str, data: bytes) -> M:
    """Parse stored bytes into ``model_type``; :class:`RecordDamagedError` if they do not fit."""
    try:
        return model_type.model_validate_json(data)
    except (ValueError, ValidationError) as exc:
        raise RecordDamagedError(
            table, key, f"record content is not a valid {model_type.__name__}"
        ) from exc


def read_record(source: Reader, model_type: type[M], table: str, key: str) -> M | None:
    """Read and parse one record, or ``None`` when it does not exist."""
    data = source.get(table, key)
    return None if data is None else decode_record(model_type, table, key, data)


def require_record(source: Reader, model_type: type[M], table: str, key: str) -> M:
    """Read and parse one record that must exist; a missing one means the database is damaged."""
    record = read_record(source, model_type, table, key)
    if record is None:
        raise RecordDamagedError(table, key, "the record is missing")
    return record


def write_record(txn: Transaction, table: str, key: str, model: BaseModel) -> int:
    """Write ``model`` as record ``table/key`` inside ``txn``; returns the record's new version."""
    return txn.put(table, key, encode_record(model))
