"""A strict DER (X.690) reader: just enough to take a certificate apart without a full parser.

AMD's SEV-SNP certificates have serial number 0, which ``cryptography`` deprecates loading; this
reader lets the attestation code read such certificates itself (see
:mod:`opencas.attestation.amd_certificate`). It accepts only DER: single-byte tags, definite
lengths in their shortest form, and every element inside its parent. Every failure is a
``ValueError`` that names the offset of the offending element in the outermost buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
BOOLEAN = 0x01
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
#: String types a Name's attribute values use.
STRING_TAGS = frozenset({0x0C, 0x13, 0x16, 0x14, 0x1E})

#: The most elements one constructed element may hold; a certificate has a few dozen at most.
MAX_CHILDREN = 256
#: Lengths are at most four bytes long: no DER object this code reads is near 4 GiB.
_MAX_LENGTH_BYTES = 4


@dataclass(frozen=True)
class Element:
    """One DER element: its ``tag``, whole encoding ``raw``, ``content``, and ``offset``."""

    tag: int
    raw: bytes
    content: bytes
    offset: int

    def context(self, number: int) -> bool:
        """True when this is the constructed context-specific element ``[number]``."""
        return self.tag == 0xA0 | number


def read_element(data: bytes, offset: int = 0, *, base: int = 0) -> Element:
    """The element that starts at ``offset`` of ``data`` (``base`` is where ``data`` starts)."""
    where = base + offset
    if offset + 2 > len(data):
        raise ValueError(f"DER element at offset {where} is truncated")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError(f"DER element at offset {where} has a multi-byte tag")
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > _MAX_LENGTH_BYTES:
            raise ValueError(f"DER element at offset {where} has an invalid length form")
        if start + count > len(data):
            raise ValueError(f"DER element at offset {where} is truncated")
        length = int.from_bytes(data[start : start + count], "big")
        if length < 0x80 or data[start] == 0:
            raise ValueError(f"DER element at offset {where} has a non-minimal length")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError(
            f"DER element at offset {where} is {length} bytes long but only "
            f"{len(data) - start} remain"
        )
    return Element(tag=tag, raw=data[offset:end], content=data[start:end], offset=where)


def read_single(data: bytes, *, base: int = 0, tag: int | None = None) -> Element:
    """The one element ``data`` consists of; trailing bytes or another ``tag`` are an error."""
    element = read_element(data, base=base)
    if len(element.raw) != len(data):
        raise ValueError(f"DER data at offset {base} has {len(data) - len(element.raw)} bytes left")
    if tag is not None and element.tag != tag:
        raise ValueError(
            f"DER element at offset {base} has tag 0x{element.tag:02x}, expected 0x{tag:02x}"
        )
    return element


def children(element: Element, *, tag: int | None = None) -> list[Element]:
    """The elements inside constructed ``element`` (checking its ``tag`` when given)."""
    if tag is not None and element.tag != tag:
        raise ValueError(
            f"DER element at offset {element.offset} has tag 0x{element.tag:02x}, "
            f"expected 0x{tag:02x}"
        )
    if not element.tag & 0x20:
        raise ValueError(f"DER element at offset {element.offset} is not constructed")
    base = element.offset + len(element.raw) - len(element.content)
    items: list[Element] = []
    position = 0
    while position < len(element.content):
        if len(items) == MAX_CHILDREN:
            raise ValueError(
                f"DER element at offset {element.offset} has more than {MAX_CHILDREN} elements"
            )
        item = read_element(element.content, position, base=base)
        items.append(item)
        position += len(item.raw)
    return items


def only(element: Element) -> Element:
    """The one element inside constructed ``element`` (an EXPLICIT tag's content)."""
    inner = children(element)
    if len(inner) != 1:
        raise ValueError(
            f"DER element at offset {element.offset} holds {len(inner)} elements, expected one"
        )
    return inner[0]


def expect(element: Element, tag: int, what: str) -> Element:
    """``element`` when it has ``tag``; else a ``ValueError`` naming ``what`` and its offset."""
    if element.tag != tag:
        raise ValueError(
            f"{what} at offset {element.offset} has tag 0x{element.tag:02x}, expected 0x{tag:02x}"
        )
    return element


def object_identifier(element: Element) -> str:
    """The dotted text of an OBJECT IDENTIFIER element."""
    content = expect(element, OBJECT_IDENTIFIER, "object identifier").content
    if not content or content[-1] & 0x80:
        raise ValueError(f"object identifier at offset {element.offset} is truncated")
    arcs: list[int] = []
    value = 0
    for index, byte in enumerate(content):
        if value == 0 and byte == 0x80 and (index == 0 or not content[index - 1] & 0x80):
            raise ValueError(f"object identifier at offset {element.offset} is not minimal")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(arc) for arc in head + arcs[1:])


def integer(element: Element) -> int:
    """The value of an INTEGER element (minimal two's complement)."""
    content = expect(element, INTEGER, "integer").content
    if not content:
        raise ValueError(f"integer at offset {element.offset} is empty")
    if len(content) > 1 and (
        (content[0] == 0 and not content[1] & 0x80) or (content[0] == 0xFF and content[1] & 0x80)
    ):
        raise ValueError(f"integer at offset {element.offset} is not minimal")
    return int.from_bytes(content, "big", signed=True)


def bit_string_bytes(element: Element) -> bytes:
    """The bytes of a BIT STRING element that has no unused bits."""
    content = expect(element, BIT_STRING, "bit string").content
    if not content or content[0] != 0:
        raise ValueError(f"bit string at offset {element.offset} has unused bits")
    return content[1:]


def time(element: Element) -> datetime:
    """The UTC time of a UTCTime or GeneralizedTime element (whole seconds, ``Z``)."""
    try:
        text = element.content.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError(f"time at offset {element.offset} is not ASCII") from exc
    if element.tag == UTC_TIME and len(text) == 13:
        year = int(text[:2]) if text[:2].isdigit() else -1
        # RFC 5280 4.1.2.5.1: two-digit years 50-99 are 19xx, 00-49 are 20xx.
        text = ("19" if year >= 50 else "20") + text
    elif element.tag != GENERALIZED_TIME or len(text) != 15:
        raise ValueError(f"time at offset {element.offset} is not a UTCTime or GeneralizedTime")
    if not text.endswith("Z") or not text[:-1].isdigit():
        raise ValueError(f"time at offset {element.offset} is not of the form YYYYMMDDHHMMSSZ")
    try:
        return datetime.strptime(text[:-1], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"time at offset {element.offset} is not a valid date") from exc
