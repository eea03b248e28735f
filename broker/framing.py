"""MQTT packet framing under limits: a packet's bytes are read whole, and only then parsed.

amqtt reads a packet field by field straight from the socket, so it would buffer whatever
length a client announces, and a packet it cannot parse leaves the rest of its bytes in the
stream to be read as the next packet. Headwater reads each packet as one frame first:

1. the fixed header's first byte and the remaining length (at most four bytes, MQTT 2.2.3);
2. refuse the frame when header plus body would exceed the connection's ``max_packet_size``
   (nothing of the body is read: an announced 250 MB packet costs nothing);
3. read exactly the body, then hand it to amqtt's packet class through an in-memory reader;
4. a packet that does not parse, or that leaves bytes of its frame unread, is malformed.

The caller closes the connection on any :class:`FramingError` (MQTT 3.1.1 section 4.8: a
malformed packet closes the network connection). This module never closes anything itself and
never logs; it reads and decides.

Exceptions::

    Exception
     └── FramingError              the connection must be closed
          ├── PacketTooLargeError  the announced packet exceeds max_packet_size
          ├── MalformedPacketError the bytes are not a valid MQTT 3.1.1 packet
          └── TruncatedPacketError the connection ended inside a packet
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from amqtt.adapters import ReaderAdapter
from amqtt.mqtt import packet_dict
from amqtt.mqtt.packet import MQTTFixedHeader

if TYPE_CHECKING:
    from amqtt.mqtt.packet import MQTTPacket

__all__ = [
    "Frame",
    "FramingError",
    "MalformedPacketError",
    "PacketTooLargeError",
    "TruncatedPacketError",
    "parse_frame",
    "read_frame",
    "replay_reader",
]

_MAX_LENGTH_BYTES: Final = 4


class FramingError(Exception):
    """The connection's byte stream cannot go on: close it."""


class PacketTooLargeError(FramingError):
    """A packet announced more bytes than the connection may send in one packet."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"a packet of {size} bytes exceeds max_packet_size ({limit} bytes)")


class MalformedPacketError(FramingError):
    """The bytes of a frame are not a valid MQTT 3.1.1 packet."""


class TruncatedPacketError(FramingError):
    """The connection ended in the middle of a packet."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One MQTT packet's bytes: the first header byte and the body after the remaining length."""

    first_byte: int
    body: bytes

    @property
    def packet_type(self) -> int:
        """The MQTT control packet type (1 = CONNECT ... 14 = DISCONNECT)."""
        return self.first_byte >> 4

    @property
    def flags(self) -> int:
        """The four flag bits of the fixed header."""
        return self.first_byte & 0x0F

    def encoded(self) -> bytes:
        """The packet as it was on the wire (fixed header included)."""
        return MQTTFixedHeader(self.packet_type, self.flags, len(self.body)).to_bytes() + self.body


class _BodyReader(ReaderAdapter):
    """Serves one frame's body to amqtt's parsers, and tells what they left unread."""

    def __init__(self, body: bytes) -> None:
        self._body = memoryview(body)
        self._position = 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self._body) if n < 0 else min(len(self._body), self._position + n)
        data = bytes(self._body[self._position : end])
        self._position = end
        return data

    def feed_eof(self) -> None:
        self._position = len(self._body)

    @property
    def unread(self) -> int:
        return len(self._body) - self._position


def replay_reader(frame: Frame) -> ReaderAdapter:
    """A reader that serves ``frame`` exactly as it arrived, for parsers that read the header too."""
    return _BodyReader(frame.encoded())


async def _read_exactly(reader: ReaderAdapter, count: int) -> bytes:
    """``count`` bytes, or fewer when the connection ended (amqtt's adapters differ on EOF)."""
    try:
        return await reader.read(count)
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except (ConnectionError, OSError):
        return b""


async def read_frame(reader: ReaderAdapter, *, max_packet_size: int) -> Frame | None:
    """Read the next packet's frame; None when the connection ended cleanly between packets.

    Raises :class:`PacketTooLargeError` before reading a body that would exceed
    ``max_packet_size``, :class:`MalformedPacketError` for a remaining length longer than four
    bytes, :class:`TruncatedPacketError` when the stream ends inside a packet.
    """
    # Every packet has at least two header bytes: read them together.
    head = await _read_exactly(reader, 2)
    if not head:
        return None
    if len(head) < 2:  # noqa: PLR2004
        raise TruncatedPacketError("the connection ended inside a fixed header")
    first_byte = head[0]
    encoded = head[1]
    length = encoded & 0x7F
    header_size = 2
    shift = 7
    while encoded & 0x80:
        if header_size - 1 >= _MAX_LENGTH_BYTES:
            raise MalformedPacketError("the remaining length has more than four bytes")
        more = await _read_exactly(reader, 1)
        if not more:
            raise TruncatedPacketError("the connection ended inside a remaining length")
        encoded = more[0]
        length |= (encoded & 0x7F) << shift
        shift += 7
        header_size += 1
    if header_size + length > max_packet_size:
        raise PacketTooLargeError(header_size + length, max_packet_size)
    body = await _read_exactly(reader, length) if length else b""
    if len(body) < length:
        msg = f"the connection ended {length - len(body)} bytes before the end of a packet"
        raise TruncatedPacketError(msg)
    return Frame(first_byte, body)


async def parse_frame(frame: Frame) -> MQTTPacket[Any, Any, Any]:
    """Decode ``frame`` with amqtt's packet classes; raise :class:`MalformedPacketError`."""
    packet_class = packet_dict.get(frame.packet_type)
    if packet_class is None:
        msg = f"reserved packet type {frame.packet_type}"
        raise MalformedPacketError(msg)
    header = MQTTFixedHeader(frame.packet_type, frame.flags, len(frame.body))
    body = _BodyReader(frame.body)
    try:
        packet = await packet_class.from_stream(body, fixed_header=header)
    except Exception as exc:
        # amqtt's parsers raise MQTTError, NoDataError, UnicodeDecodeError, struct.error...:
        # for the connection they all mean one thing.
        name = packet_class.__name__.removesuffix("Packet").upper()
        msg = f"cannot parse a {name} packet: {str(exc) or type(exc).__name__}"
        raise MalformedPacketError(msg) from exc
    if body.unread:
        name = packet_class.__name__.removesuffix("Packet").upper()
        msg = f"a {name} packet has {body.unread} bytes past its end"
        raise MalformedPacketError(msg)
    return packet
