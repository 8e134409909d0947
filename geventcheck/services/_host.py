"""The service host: ``python -m geventcheck.services._host CONFIG``.

A process of its own, so an audited task that blocks its interpreter cannot
freeze the mocks it is talking to. It prints one JSON line on stdout (the
ports, or an error) once every server listens, and exits when its stdin closes,
which also happens when the parent dies.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from ._config import HostConfig
from ._log import RequestLog
from ._servers import BindError, start_all


def main(argv: list[str]) -> int:
    config = HostConfig.loads(Path(argv[0]).read_text(encoding="utf-8"))
    return asyncio.run(_serve(config))


async def _serve(config: HostConfig) -> int:
    log = RequestLog(config.log_path)
    try:
        try:
            servers, ports = await start_all(config, log)
        except BindError as exc:
            _report({"error": str(exc)})
            return 1
        _report({"ports": ports})
        await _until_told_to_stop()
        for server in servers:
            server.close()
        return 0
    finally:
        log.close()


async def _until_told_to_stop() -> None:
    """Return on EOF on stdin or on SIGTERM, whichever comes first."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        while await reader.read(4096):
            pass
        stop.set()

    watcher = asyncio.create_task(watch_stdin())
    await stop.wait()
    watcher.cancel()


def _report(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
