"""The egress guard for the Python processes an audited task starts.

geventcheck puts this folder first on ``PYTHONPATH`` in the audited process, so every
Python child that inherits its environment imports this module at start-up (as
``site`` does with any ``sitecustomize``). With ``GEVENTCHECK_CHILD_GUARD`` set, it
loads geventcheck's egress guard by file path (the child needs no geventcheck
installed, only Python 3.10 or later), activates it with the audit's allowed
endpoints, and appends every refusal as a JSON line to the audit's report file.
Then it runs the ``sitecustomize`` it shadows, if there is one.
"""

from __future__ import annotations

import os
import sys


def _install_guard() -> None:
    raw = os.environ.get("GEVENTCHECK_CHILD_GUARD")
    if not raw:
        return
    import importlib.util
    import json

    config = json.loads(raw)
    spec = importlib.util.spec_from_file_location("_geventcheck_child_egress", config["egress"])
    if spec is None or spec.loader is None:
        return
    egress = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = egress  # dataclasses look their module up while building
    spec.loader.exec_module(egress)
    report = config["report"]

    class ReportingGuard(egress.EgressGuard):  # type: ignore[name-defined,misc]
        def refuse(self, host, port, kind, frame):  # type: ignore[no-untyped-def]
            try:
                super().refuse(host, port, kind, frame)
            except PermissionError:
                attempt = self.attempts[-1]
                line = json.dumps({
                    "host": attempt.host, "port": attempt.port, "kind": attempt.kind,
                    "file": attempt.file, "line": attempt.line, "function": attempt.function,
                    "stack": list(attempt.stack), "pid": os.getpid(),
                    "argv": " ".join([sys.executable, *sys.argv]) if sys.argv else "?",
                })
                try:
                    fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    try:
                        os.write(fd, line.encode() + b"\n")
                    finally:
                        os.close(fd)
                except OSError:
                    pass
                raise

    allowed = [(host, port) for host, port in config["allowed"]]
    guard = ReportingGuard(allowed=allowed, allowed_hosts=[host for host, _ in allowed],
                           host_map=config["host_map"], port_map=config["port_map"],
                           is_app_file=lambda path: False)
    guard.activate()


def _run_shadowed() -> None:
    """The sitecustomize this one hides on sys.path (a distribution's, a venv's)."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


try:
    _install_guard()
except Exception as exc:  # never stop the child from starting; say so on stderr
    print(f"geventcheck: the egress guard could not start in this child: {exc!r}",
          file=sys.stderr)
_run_shadowed()
