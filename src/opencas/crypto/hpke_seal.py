"""HPKE sealing of a workload's configuration to the key the workload attested (RFC 9180).

The CAS seals a workload's rendered configuration to the public key that the workload's evidence
binds; only the holder of the private key, inside the attested TEE, can open it. The suite is
DHKEM(X25519, HKDF-SHA256) for an X25519 recipient key and DHKEM(P-256, HKDF-SHA256) for a P-256
one, always with HKDF-SHA256 and AES-256-GCM, base mode, single shot. The HPKE ``info`` binds the
config id and the nonce of the attestation, so a sealed configuration opens only in the exchange
it was made for::

    info = b"opencas-workload-config/v1\\x00" + canonical_json({"config_id": ..., "nonce": ...})

The sealed form is what ``Suite.encrypt`` returns (the encapsulated key followed by the
ciphertext), in standard base64. This module is pure: no I/O beyond the operating system's random
source.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from opencas.crypto.canonical import canonical_json
from opencas.crypto.encoding import b64_decode, b64_encode

KemName = Literal["X25519", "P-256"]
RecipientPrivateKey: TypeAlias = x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey
RecipientPublicKey: TypeAlias = x25519.X25519PublicKey | ec.EllipticCurvePublicKey

INFO_PREFIX = b"opencas-workload-config/v1\x00"
#: The AES-GCM tag every HPKE ciphertext ends with.
_TAG_SIZE = 16
_KEMS: dict[str, hpke.KEM] = {"X25519": hpke.KEM.X25519, "P-256": hpke.KEM.P256}


class UnsupportedRecipientKey(ValueError):
    """The recipient public key is not a DER SubjectPublicKeyInfo of an X25519 or P-256 key."""


class SealedConfig(NamedTuple):
    """A configuration sealed for one exchange: the KEM it was sealed with (``"X25519"`` or
    ``"P-256"`` when this module sealed it; whatever a CAS named, when a client received it) and
    the standard base64 of ``enc || ciphertext``. What the enclave API answers, as it answers it.
    """

    kem: str
    sealed: str


class SealedConfigError(ValueError):
    """A sealed configuration cannot be opened: malformed, wrong key, wrong info, or tampered."""


def hpke_info(config_id: str, nonce: str) -> bytes:
    """The HPKE ``info`` for the exchange ``(config_id, nonce)``, as the module docstring says.

    Raises ``ValueError`` when either value is not a string JSON can encode.
    """
    if not isinstance(config_id, str) or not isinstance(nonce, str):
        raise ValueError("config_id and nonce must be strings")
    return INFO_PREFIX + canonical_json({"config_id": config_id, "nonce": nonce})


def _suite(kem: KemName) -> hpke.Suite:
    return hpke.Suite(_KEMS[kem], hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def kem_for_public_key(public_key: object) -> KemName:
    """The KEM name for ``public_key``; :class:`UnsupportedRecipientKey` for other key types."""
    if isinstance(public_key, x25519.X25519PublicKey):
        return "X25519"
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return "P-256"
    raise UnsupportedRecipientKey("the workload key must be an X25519 or a P-256 public key")


def kem_for_private_key(private_key: object) -> KemName:
    """The KEM name for ``private_key``; :class:`UnsupportedRecipientKey` for other key types."""
    if isinstance(private_key, x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey):
        return kem_for_public_key(private_key.public_key())
    raise UnsupportedRecipientKey("the workload key must be an X25519 or a P-256 private key")


def load_recipient_public_key(public_key_der: bytes) -> RecipientPublicKey:
    """Load a DER SubjectPublicKeyInfo that holds an X25519 or P-256 key.

    Raises :class:`UnsupportedRecipientKey` for anything else (bad DER, another algorithm or
    curve, trailing bytes).
    """
    try:
        key = serialization.load_der_public_key(public_key_der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UnsupportedRecipientKey(
            "the workload key is not a DER SubjectPublicKeyInfo public key"
        ) from exc
    if not isinstance(key, x25519.X25519PublicKey | ec.EllipticCurvePublicKey):
        raise UnsupportedRecipientKey("the workload key must be an X25519 or a P-256 public key")
    kem_for_public_key(key)
    # Re-encoding must give the same bytes, so one key has exactly one accepted encoding (the
    # report data hashes the base64 text the workload sent).
    if (
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        != public_key_der
    ):
        raise UnsupportedRecipientKey(
            "the workload key is not in its DER SubjectPublicKeyInfo form"
        )
    return key


class HpkeSealed(NamedTuple):
    """What :func:`hpke_seal` made: the KEM name and ``enc || ciphertext``."""

    kem: KemName
    sealed_bytes: bytes


def hpke_seal(public_key: bytes | RecipientPublicKey, plaintext: bytes, info: bytes) -> HpkeSealed:
    """Seal ``plaintext`` to the X25519 or P-256 key ``public_key`` with HPKE ``info``.

    ``public_key`` is a DER SubjectPublicKeyInfo, or a key :func:`load_recipient_public_key`
    returned (a caller that loaded it already does not pay for loading it again). The suite is
    the module's (the KEM from the key type, HKDF-SHA256, AES-256-GCM, base mode). Raises
    :class:`UnsupportedRecipientKey` for any other key or encoding.
    """
    key = load_recipient_public_key(public_key) if isinstance(public_key, bytes) else public_key
    kem = kem_for_public_key(key)
    return HpkeSealed(kem, _suite(kem).encrypt(plaintext, key, info=info))


def hpke_open(private_key: RecipientPrivateKey, sealed: bytes, info: bytes) -> bytes:
    """Open what :func:`hpke_seal` sealed to ``private_key``'s public half with ``info``.

    Raises :class:`SealedConfigError` when ``sealed`` is too short, was sealed to another key or
    with another ``info``, or any byte of it changed; :class:`UnsupportedRecipientKey` when the
    private key is not X25519 or P-256.
    """
    kem = kem_for_private_key(private_key)
    if len(sealed) < _KEMS[kem].enc_length() + _TAG_SIZE:
        raise SealedConfigError("the sealed data is too short")
    try:
        return _suite(kem).decrypt(sealed, private_key, info=info)
    except (InvalidTag, ValueError) as exc:
        raise SealedConfigError("the sealed data does not open with this key and info") from exc


def seal_workload_config(
    public_key: bytes | RecipientPublicKey, plaintext: bytes, config_id: str, nonce: str
) -> SealedConfig:
    """Seal ``plaintext`` to ``public_key`` (a DER SubjectPublicKeyInfo, or a key
    :func:`load_recipient_public_key` returned) for one exchange.

    Returns a :class:`SealedConfig` ``(kem, sealed)``: the KEM name (``"X25519"`` or
    ``"P-256"``, from the key type) and the standard base64 of ``enc || ciphertext``. Only the
    matching private key, given the same ``config_id`` and ``nonce``, opens it
    (:func:`open_workload_config`). Raises :class:`UnsupportedRecipientKey` (a ``ValueError``)
    when the key is not an X25519 or P-256 public key in DER SubjectPublicKeyInfo form.
    """
    kem, sealed = hpke_seal(public_key, plaintext, hpke_info(config_id, nonce))
    return SealedConfig(kem, b64_encode(sealed))


def open_workload_config(
    private_key: RecipientPrivateKey, sealed_b64: str, config_id: str, nonce: str
) -> bytes:
    """Open what :func:`seal_workload_config` sealed to ``private_key``'s public half.

    Returns the plaintext bytes. Raises :class:`SealedConfigError` (a ``ValueError``) when
    ``sealed_b64`` is not standard base64, is too short, was sealed to another key or for another
    ``(config_id, nonce)``, or any byte of it changed; :class:`UnsupportedRecipientKey` when the
    private key is not X25519 or P-256.
    """
    kem = kem_for_private_key(private_key)
    if not isinstance(sealed_b64, str):
        raise SealedConfigError("the sealed configuration must be a base64 string")
    try:
        sealed = b64_decode(sealed_b64)
    except ValueError as exc:
        raise SealedConfigError("the sealed configuration is not valid base64") from exc
    if len(sealed) < _KEMS[kem].enc_length() + _TAG_SIZE:
        raise SealedConfigError("the sealed configuration is too short")
    try:
        return _suite(kem).decrypt(sealed, private_key, info=hpke_info(config_id, nonce))
    except (InvalidTag, ValueError) as exc:
        raise SealedConfigError(
            "the sealed configuration does not open with this key for this config id and nonce"
        ) from exc
