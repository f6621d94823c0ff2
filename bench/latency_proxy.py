"""A loopback TCP proxy that adds a fixed one-way delay to every byte, both ways.

Each chunk read from one side is written to the other `delay` seconds after it arrived,
in order, so a round trip through the proxy takes twice the delay more than without it;
bandwidth is not limited. Run it as its own process (`python -m bench.latency_proxy
LISTEN_PORT TARGET_PORT DELAY_MS`), so that its work does not share a GIL with what it
measures; it prints "ready" once it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    except OSError:
        pass
    queue.put_nowait((loop.time() + delay, b""))
    with contextlib.suppress(OSError):
        await delivering


async def serve(listen_port: int, target_port: int, delay: float) -> None:
    async def handle(client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(_pipe(client_reader, server_writer, delay),
                                 _pipe(server_reader, client_writer, delay))
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    listen_port, target_port, delay_ms = (argv if argv is not None else sys.argv[1:])[:3]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(int(listen_port), int(target_port), float(delay_ms) / 1000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
