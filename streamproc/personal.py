"""Personal data kept out of side topics: what a dead letter may hold of an event whose
fields are marked personal (``personal_data:`` in the pipeline config).

A dead letter is read by more people than the input topic, so when a pipeline names
personal fields its dead letters never carry the event's original value: a rejected
payload is, by definition, one the processor could not fully decode, so the fields in it
cannot be found and masked one by one. The value is dropped (``null``) and the detail says
so (:data:`REDACTED`), with a keyed hash of the original so that the same payload rejected
twice can be recognised. The record key, when marked personal (the demo keys events by
``account_id``), is replaced by its keyed hash: equal keys still hash equal, so the dead
letters of one account stay together and can be counted, but the account cannot be read
back without the hash key. A redacted dead letter cannot be replayed (the original is not
in it): ``streamproc dlq replay`` passes it with that reason, and the event is resent from
its source.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamproc.config import PersonalDataSettings

# The detail of a redacted dead letter starts with this: replay recognises it by it.
REDACTED = "value_redacted"
_HASH_PREFIX = b"hmac-sha256:"


@dataclass(frozen=True)
class Redactor:
    """Hashes personal values with HMAC-SHA256 under ``secret``."""

    fields: tuple[str, ...]
    key_personal: bool
    secret: bytes

    @classmethod
    def from_settings(
        cls,
        settings: PersonalDataSettings,
        schema: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Redactor | None:
        """``None`` when nothing is marked personal, in the settings or (``"personal":
        true`` on a field) in the input's Avro ``schema``. The hash key comes from the
        variable the settings name; without it, a random key for this process: values are
        still hidden, but hashes match only within one process's dead letters."""
        fields = list(dict.fromkeys([*settings.fields, *personal_fields(schema or {})]))
        if not fields and not settings.key:
            return None
        env = os.environ if env is None else env
        text = env.get(settings.hash_key_env, "")
        secret = text.encode() if text else secrets.token_bytes(32)
        return cls(tuple(fields), settings.key, secret)

    def hash(self, data: bytes) -> bytes:
        return _HASH_PREFIX + hmac.new(self.secret, data, hashlib.sha256).hexdigest().encode()

    def key(self, key: bytes | None) -> bytes | None:
        """The record key as a dead letter may carry it."""
        if key is None or not self.key_personal:
            return key
        return self.hash(key)

    def detail(self, detail: str, value: bytes | None) -> str:
        """The dead letter's detail once its value is dropped. A detail that names a
        personal field may quote its value (``age is -3.0, below 0``, ``country='X' is not
        one of ...``): it is replaced by the field's name alone.

        >>> r = Redactor(("age",), False, b"k")
        >>> r.detail("age is -3.0, below its minimum 0", None)
        'age: detail withheld (a personal field)'
        >>> r.detail("amount is NaN", None)
        'amount is NaN'
        """
        for f in self.fields:
            if re.search(rf"(?<![\w.]){re.escape(f)}(?![\w])", detail):
                detail = f"{f}: detail withheld (a personal field)"
                break
        if value is None:
            return detail
        what = ", ".join(self.fields) or "the record key"
        return f"{REDACTED} (personal: {what}; {self.hash(value).decode()}): {detail}"


def personal_fields(schema: Mapping[str, Any]) -> list[str]:
    """The fields of an Avro record schema marked ``"personal": true`` (nested records
    give dotted names)."""
    out: list[str] = []
    for f in schema.get("fields") or ():
        if not isinstance(f, Mapping):
            continue
        if f.get("personal") is True:
            out.append(str(f["name"]))
        sub = f.get("type")
        if isinstance(sub, Mapping) and sub.get("type") == "record":
            out += [f"{f['name']}.{n}" for n in personal_fields(sub)]
    return out


def is_redacted(detail: str) -> bool:
    return detail.startswith(REDACTED)


__all__ = ["REDACTED", "Redactor", "is_redacted", "personal_fields"]
