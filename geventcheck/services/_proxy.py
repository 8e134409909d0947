"""A TCP relay that delays every chunk, to give a real database a network's latency.

Chunks are queued with a due time and delivered in order, so the delay adds
latency without capping throughput: one round trip costs about twice the delay.
"""

from __future__ import annotations

import asyncio
import contextlib

from ._log import RequestLog, peer
from ._spec import ProxyService

CHUNK = 65536
QUEUE_CHUNKS = 256  # back-pressure on a slow reader instead of unbounded memory

_Item = tuple[float, bytes] | None


class LatencyProxy:
    """Connection handler for one ``ProxyService``; pass ``handle`` to ``asyncio.start_server``."""

    def __init__(self, spec: ProxyService, log: RequestLog) -> None:
        self.spec = spec
        self.log = log

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        started = loop.time()
        client = peer(writer.get_extra_info("peername"))
        target = f"{spec.target_host}:{spec.target_port}"
        try:
            up_reader, up_writer = await asyncio.open_connection(
                spec.target_host, spec.target_port
            )
        except OSError as exc:
            self.log.record(
                spec.name, "tcp", event="open", method="CONNECT", path=target,
                status="unreachable", client=client, error=exc.strerror or str(exc),
            )
            writer.close()
            return
        self.log.record(
            spec.name, "tcp", event="open", method="CONNECT", path=target, status="ok",
            client=client,
        )
        delay = spec.latency_ms / 1000
        try:
            sent_up, sent_down = await asyncio.gather(
                _relay(reader, up_writer, delay), _relay(up_reader, writer, delay)
            )
        finally:
            up_writer.close()
            writer.close()
        self.log.record(
            spec.name, "tcp", event="close", method="CONNECT", path=target, status="ok",
            client=client, bytes_up=sent_up, bytes_down=sent_down,
            duration_ms=round((loop.time() - started) * 1000, 3),
        )


async def _relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> int:
    """Copy ``src`` to ``dst``, each chunk ``delay`` seconds late; the byte count."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Item] = asyncio.Queue(QUEUE_CHUNKS)
    delivery = asyncio.create_task(_deliver(queue, dst))
    total = 0
    try:
        try:
            while data := await src.read(CHUNK):
                total += len(data)
                await queue.put((loop.time() + delay, data))
        except OSError:
            pass  # a reset ends this direction like an EOF
        await queue.put(None)
        await delivery
    finally:
        delivery.cancel()  # only matters when the proxy itself is being shut down
    return total


async def _deliver(queue: asyncio.Queue[_Item], dst: asyncio.StreamWriter) -> None:
    """Write chunks when due; after a write error keep draining so the reader never stalls."""
    loop = asyncio.get_running_loop()
    broken = False
    while (item := await queue.get()) is not None:
        if broken:
            continue
        due, data = item
        await asyncio.sleep(max(0.0, due - loop.time()))
        try:
            dst.write(data)
            await dst.drain()
        except OSError:
            broken = True
            dst.close()
    if not broken and dst.can_write_eof():
        with contextlib.suppress(OSError):
            dst.write_eof()
