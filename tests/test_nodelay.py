"""The stack's MLflow server loop turns TCP_NODELAY on for every connection it accepts, where
asyncio's own loop leaves it off on a listener bound as uvicorn's workers bind theirs."""

from __future__ import annotations

import asyncio
import socket

from pipeline.stack.nodelay import Loop


def accepted_nodelay(loop_class: type[asyncio.AbstractEventLoop]) -> int:
    """TCP_NODELAY of a connection accepted by `loop_class` on a listener made as uvicorn's
    `Config.bind_socket` makes it (protocol 0)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    loop = loop_class()
    accepted: asyncio.Future = loop.create_future()

    class Report(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def connect() -> int:
        server = await loop.create_server(Report, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        value = await asyncio.wait_for(accepted, 60)
        writer.close()
        server.close()
        return value

    try:
        return loop.run_until_complete(connect())
    finally:
        loop.close()


def test_server_loop_sets_nodelay_on_connections_of_a_protocol_0_listener() -> None:
    assert accepted_nodelay(asyncio.SelectorEventLoop) == 0  # the delay it removes
    assert accepted_nodelay(Loop) != 0
