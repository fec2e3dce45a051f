"""What one session may hold and cost, and how often one signing key may upload sessions.

The limits are the availability config's ``[limits]`` (:class:`SessionLimits`, documented in
docs/operations.md). Each refusal is a :class:`LimitExceededError` that names the setting which
raises it. They bound the work one upload and one attestation can cause: parsing and hashing
(``max_session_bytes``), checking and rendering placeholders (``max_placeholders_per_session``,
``max_rendered_config_bytes``), generating secrets (``max_secrets_per_session``,
``max_rsa_keys_per_session``), and how often one signing key may cause it
(:class:`UploadRateLimiter`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from opencas.config.availability import SessionLimits
from opencas.errors import LimitExceededError, RateLimitedError
from opencas.policy.model import Session
from opencas.policy.placeholders import find_placeholders
from opencas.store.guards import PostgresGuards

_RSA_KEY_TYPES = frozenset({"RSA-2048", "RSA-3072"})
_CERTIFICATE_KINDS = frozenset({"x509", "x509-ca"})


def check_session_text(text: str, limits: SessionLimits) -> None:
    """Refuse a session text longer than ``max_session_bytes``, before anything parses it."""
    size = len(text.encode("utf-8"))
    if size > limits.max_session_bytes:
        raise LimitExceededError(
            f"the session is {size} bytes, more than the {limits.max_session_bytes} this CAS "
            "accepts",
            limit="max_session_bytes",
            allowed=limits.max_session_bytes,
            found=size,
        )


def check_session(session: Session, limits: SessionLimits) -> None:
    """Refuse a parsed session with more placeholders, secrets or new RSA keys than allowed."""
    secrets = len(session.secrets)
    if secrets > limits.max_secrets_per_session:
        raise LimitExceededError(
            f"the session declares {secrets} secrets, more than the "
            f"{limits.max_secrets_per_session} this CAS accepts",
            limit="max_secrets_per_session",
            allowed=limits.max_secrets_per_session,
            found=secrets,
        )
    rsa_keys = sum(1 for _ in _new_rsa_keys(session))
    if rsa_keys > limits.max_rsa_keys_per_session:
        raise LimitExceededError(
            f"storing the session would make {rsa_keys} RSA keys, more than the "
            f"{limits.max_rsa_keys_per_session} this CAS makes for one session",
            limit="max_rsa_keys_per_session",
            allowed=limits.max_rsa_keys_per_session,
            found=rsa_keys,
        )
    placeholders = sum(len(find_placeholders(text)) for text in placeholder_texts(session))
    if placeholders > limits.max_placeholders_per_session:
        raise LimitExceededError(
            f"the session has {placeholders} placeholders, more than the "
            f"{limits.max_placeholders_per_session} this CAS accepts",
            limit="max_placeholders_per_session",
            allowed=limits.max_placeholders_per_session,
            found=placeholders,
        )


def placeholder_texts(session: Session) -> Iterator[str]:
    """Every text of ``session`` in which placeholders are replaced."""
    for service in session.services:
        yield from service.command
        yield from service.environment.values()
        if service.pwd is not None:
            yield service.pwd
    for image in session.images:
        for file in image.injection_files:
            if file.content is not None:
                yield file.content


def _new_rsa_keys(session: Session) -> Iterator[str]:
    """The secrets for which storing ``session`` may generate an RSA key (migrated ones too)."""
    for spec in session.secrets:
        if spec.import_ is not None or spec.key_type not in _RSA_KEY_TYPES:
            continue
        if (spec.kind == "private-key" and spec.value is None) or (
            spec.kind in _CERTIFICATE_KINDS and spec.private_key is None
        ):
            yield spec.name


class RenderBudget:
    """Counts the bytes of one rendered configuration; refuses past ``max_rendered_config_bytes``.

    Counted as the configuration is rendered, so that an oversized one is refused before it is
    built whole in memory.
    """

    def __init__(self, limits: SessionLimits) -> None:
        self._allowed = limits.max_rendered_config_bytes
        self._used = 0

    def spend(self, text: str) -> str:
        """Count ``text`` (returned as is); :class:`LimitExceededError` once over the limit."""
        self._used += len(text) if text.isascii() else len(text.encode("utf-8"))
        if self._used > self._allowed:
            raise LimitExceededError(
                f"the service's configuration renders to more than {self._allowed} bytes",
                limit="max_rendered_config_bytes",
                allowed=self._allowed,
                found=self._used,
            )
        return text


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class UploadRateLimiter:
    """A token bucket per signing key: ``session_upload_burst`` at once, then
    ``session_uploads_per_minute``; thread-safe.

    At most ``session_upload_identities`` keys are tracked; the one idle longest is forgotten
    to make room (it starts again with a full bucket, as a new key would). With ``shared``
    (PostgreSQL) the buckets live in the database, one per key for the whole cluster; a bucket
    that has refilled is deleted, which is the same as forgetting it.
    """

    def __init__(
        self,
        limits: SessionLimits,
        clock: Callable[[], float] = time.monotonic,
        shared: PostgresGuards | None = None,
    ) -> None:
        self._shared = shared
        self._per_minute = limits.session_uploads_per_minute
        self._rate = limits.session_uploads_per_minute / 60.0
        self._burst = float(limits.session_upload_burst)
        self._identities = limits.session_upload_identities
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """How many signing keys are tracked."""
        with self._lock:
            return len(self._buckets)

    def take(self, identity: str) -> None:
        """Count one upload by ``identity``; :class:`RateLimitedError` when its bucket is empty."""
        if self._shared is not None:
            wait = self._shared.take_upload(identity, self._burst, self._rate)
            if wait > 0:
                self._refuse(1.0 - wait * self._rate)
            return
        with self._lock:
            now = self._clock()
            bucket = self._buckets.pop(identity, None)
            if bucket is None:
                bucket = _Bucket(self._burst, now)
                while len(self._buckets) >= self._identities:
                    self._buckets.popitem(last=False)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
                bucket.updated = max(bucket.updated, now)
            self._buckets[identity] = bucket  # most recently used last
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            tokens = bucket.tokens
        self._refuse(tokens)

    def _refuse(self, tokens: float) -> NoReturn:
        wait = max(1, math.ceil((1.0 - tokens) / self._rate))
        raise RateLimitedError(
            f"this key uploads sessions faster than the {self._per_minute} a minute this CAS "
            f"accepts; retry in {wait} s (the availability config's [limits] "
            "session_uploads_per_minute and session_upload_burst raise the limit)",
            retry_after=wait,
            details={"retry_after": wait},
        )
