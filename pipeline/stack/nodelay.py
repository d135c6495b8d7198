"""The MLflow server's event loop: asyncio's, with TCP_NODELAY on every connection it accepts.

Uvicorn with more than one worker binds the listening socket itself, with its protocol left at
0, and asyncio turns TCP_NODELAY on only for sockets that say IPPROTO_TCP: each answer on a
kept-alive connection then waited for the client's delayed ACK, about 40 ms on Linux
(uvicorn issue #3149), some 60 calls per logged model. The stack's server runs with
`--uvicorn-opts "--loop pipeline.stack.nodelay:Loop"` (services.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any


class Loop(asyncio.SelectorEventLoop):
    """asyncio's selector loop; each TCP connection it accepts sends at once (no Nagle)."""

    def _accept_connection2(self, protocol_factory: Any, conn: socket.socket, *args: Any,
                            **kwargs: Any) -> Any:  # fmt: skip
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            # a connection its client already reset is asyncio's to close, not this loop's end
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return super()._accept_connection2(protocol_factory, conn, *args, **kwargs)
