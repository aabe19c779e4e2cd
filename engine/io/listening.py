"""A bound, listening, non-blocking TCP socket for listeners that accept connections themselves.

The SIP stream listeners and the admin listener both accept by hand (not `loop.create_server`)
so that each connection is admitted on its address alone, before any read or TLS handshake.
"""

from __future__ import annotations

import socket

BACKLOG = 1024


def open_listening_socket(host: str, port: int) -> socket.socket:
    """Bound to (host, port) with SO_REUSEADDR, listening, non-blocking; closed on failure."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
