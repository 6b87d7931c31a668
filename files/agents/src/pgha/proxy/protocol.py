"""The little of the PostgreSQL wire protocol the proxy speaks itself.

A client's first message is one of: a StartupMessage (protocol 3.0), an SSLRequest, a
GSSENCRequest or a CancelRequest, each an int32 length (itself included) followed by an int32
code. The proxy reads that message before it opens any upstream connection, so that a socket that
never speaks costs a file descriptor and not a PostgreSQL backend; it answers clients it turns
away with an ErrorResponse (which libpq reports, also in answer to an SSLRequest), and it can mark
a StartupMessage read-only.
"""

from __future__ import annotations

import struct

MAX_STARTUP_LENGTH = 10000  # PostgreSQL's own limit for a startup packet
PROTOCOL_3 = 3 << 16
CANCEL_REQUEST = 80877102
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
ENCRYPTION_REQUESTS = (SSL_REQUEST, GSSENC_REQUEST)

# SQLSTATE codes of the errors the proxy sends
TOO_MANY_CONNECTIONS = "53300"
CANNOT_CONNECT_NOW = "57P03"
PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"

READ_ONLY_PARAMETER = b"default_transaction_read_only"


class StartupError(ValueError):
    """The client's first bytes are not a PostgreSQL startup message."""


def first_message(buf: bytes | bytearray) -> tuple[int, int] | None:
    """(length, code) of the message at the start of ``buf`` once it is all there, None while more
    is needed; raises StartupError when it cannot be a first message."""
    if len(buf) < 8:
        return None
    length, code = struct.unpack_from("!ii", buf)
    if length < 8 or length > MAX_STARTUP_LENGTH:
        raise StartupError(f"invalid length of startup packet: {length}")
    if code in ENCRYPTION_REQUESTS and length != 8 or code == CANCEL_REQUEST and length != 16:
        raise StartupError(f"invalid length {length} of request {code}")
    if code not in ENCRYPTION_REQUESTS and code != CANCEL_REQUEST and code >> 16 != 3:
        raise StartupError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: the proxy speaks 3.0")
    if len(buf) < length:
        return None
    return length, code


def error_response(code: str, message: str, severity: str = "FATAL") -> bytes:
    """An ErrorResponse message: severity (S and V), SQLSTATE (C) and message (M)."""
    body = b"".join(field + value.encode("utf-8", "replace").replace(b"\0", b"?") + b"\0"
                    for field, value in ((b"S", severity), (b"V", severity), (b"C", code), (b"M", message)))
    body += b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


def startup_parameters(packet: bytes) -> list[tuple[bytes, bytes]]:
    """The name/value pairs of a StartupMessage (``packet`` is the whole message)."""
    parts = packet[8:].split(b"\0")
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2:
        raise StartupError("malformed startup packet: parameters are not NUL-terminated pairs")
    names_values = parts[:-2]
    return list(zip(names_values[0::2], names_values[1::2]))


def read_only_startup(packet: bytes) -> bytes:
    """``packet`` (a StartupMessage) with default_transaction_read_only=on in place of any value the
    client gave: every transaction of the session starts read-only."""
    params = [(k, v) for k, v in startup_parameters(packet) if k != READ_ONLY_PARAMETER]
    params.append((READ_ONLY_PARAMETER, b"on"))
    body = struct.pack("!i", struct.unpack_from("!i", packet, 4)[0]) + b"".join(k + b"\0" + v + b"\0"
                                                                                for k, v in params) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def startup_message(params: dict[str, str]) -> bytes:
    """A StartupMessage with ``params`` (for tests and probes)."""
    body = struct.pack("!i", PROTOCOL_3) + b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                                                    for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


AUTHENTICATION = b"R"
NEGOTIATE_PROTOCOL_VERSION = b"v"  # the server's answer to a newer minor version or _pq_ options
AUTH_SASL = 10
CHANNEL_BINDING_MECHANISM = b"SCRAM-SHA-256-PLUS"


def first_server_message(buf: bytes | bytearray) -> int | None:
    """The length of the (type byte, int32 length, body) message at the start of ``buf`` once it is
    all there, None while more is needed."""
    if len(buf) < 5:
        return None
    length = struct.unpack_from("!i", buf, 1)[0] + 1
    if length < 5 or length > 1 << 20:
        raise StartupError(f"invalid length {length} of the server's first message")
    return length if len(buf) >= length else None


def without_channel_binding(message: bytes) -> bytes:
    """``message`` (the server's first) without SCRAM-SHA-256-PLUS among the SASL mechanisms it offers.

    For the sessions the proxy carries over its own TLS while the client's leg is in clear: a
    server on TLS offers channel binding, which a client without TLS must refuse (libpq: "server
    offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection"); offered plain
    SCRAM-SHA-256 only, it logs in with it. Any other message is returned as it is."""
    if message[:1] != AUTHENTICATION or len(message) < 9 or struct.unpack_from("!i", message, 5)[0] != AUTH_SASL:
        return message
    mechanisms = [m for m in message[9:].split(b"\0") if m and m != CHANNEL_BINDING_MECHANISM]
    body = struct.pack("!i", AUTH_SASL) + b"".join(m + b"\0" for m in mechanisms) + b"\0"
    return AUTHENTICATION + struct.pack("!i", len(body) + 4) + body
