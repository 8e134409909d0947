"""Run the service host as a child process: start it, wait for its ports, stop it for sure.

The parent only ever talks to the host through its stdin (closing it means
"stop") and one line on its stdout (the ports, or why it could not start).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import geventcheck

STOP_GRACE_S = 5.0


class ServiceError(RuntimeError):
    """The mock services could not start; the message is one line for the user."""


class HostProcess:
    """One ``python -m geventcheck.services._host`` child."""

    def __init__(self, config_path: Path, stderr_path: Path) -> None:
        self.config_path = config_path
        self.stderr_path = stderr_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float) -> dict[str, int]:
        """Spawn the host and return each service's port once all of them listen."""
        root = str(Path(geventcheck.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            # -P: never import from the working directory, whatever it holds.
            [sys.executable, "-P", "-m", "geventcheck.services._host", str(self.config_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            cwd=self.config_path.parent, env=env,
            start_new_session=True,  # a Ctrl-C meant for the parent must not kill the mocks
        )
        message = self._read_message(timeout)
        if "error" in message:
            raise ServiceError(str(message["error"]))
        return {str(k): int(v) for k, v in message["ports"].items()}

    def stop(self) -> None:
        """Close stdin (the host's cue to exit), then kill it if it lingers."""
        proc = self.proc
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                # SIGKILL is final; a process the kernel holds must not hold the audit too
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_GRACE_S)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _read_message(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceError(f"the mock services did not start within {timeout:g} s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ServiceError(self._death_message())
                buffer += chunk
        message: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
        return message

    def _death_message(self) -> str:
        assert self.proc is not None
        try:
            code = self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            code = None
        lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        last = lines[-1] if lines else "no error output"
        return f"the mock service host exited (code {code}) before it was ready: {last}"
