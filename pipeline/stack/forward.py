"""`python -m pipeline.stack.forward LISTEN=TARGET ...`: TCP connections to each LISTEN address
(host:port) passed on to its TARGET, both ways, until either side closes.

The stack's services listen on 127.0.0.1; with hosts (`up --ray-hosts N`) they must also answer on
the bridge's address, which this does for them: one process, every service's port.
"""

from __future__ import annotations

import asyncio
import sys

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _handler(host: str, port: int):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()  # the service is down: the client sees the connection closed
            return
        await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))

    return handle


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(pairs: list[str]) -> None:
    servers = []
    for pair in pairs:
        listen, _, target = pair.partition("=")
        host, port = _address(listen)
        servers.append(await asyncio.start_server(_handler(*_address(target)), host, port))
    print(f"forwarding {' '.join(pairs)}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str]) -> None:
    if not argv or any("=" not in pair for pair in argv):
        sys.exit("usage: python -m pipeline.stack.forward HOST:PORT=HOST:PORT ...")
    asyncio.run(serve(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
