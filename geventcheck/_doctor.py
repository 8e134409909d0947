"""The pool doctor: what a `celery -A APP worker ...` command line really gives.

Celery patches for gevent in its entry point, by scanning the raw argv for
``-P gevent`` / ``--pool=gevent`` before anything is imported; it picks the pool
later, with click, where the command line wins over ``worker_pool`` unless it
says ``prefork``. The doctor asks Celery's own code both questions, so its
answer is the worker's, then looks for the traps of the app's configuration.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from ._model import Finding
from ._paths import relative
from .detectors._backend import FIX as BACKEND_FIX
from .detectors._backend import KIND as BACKEND_KIND
from .detectors._backend import backend_problem, setting
from .runner._appload import AppLoadError, load_tasks

# Signals a gevent worker never sends: there is no child process.
_NEVER_SENT = ("worker_process_init", "worker_process_shutdown")


class DoctorError(Exception):
    """The app or the command line could not be read: one line for the user."""


@dataclass(frozen=True)
class Diagnosis:
    app: str
    argv: tuple[str, ...]
    effective_pool: str
    patched: bool
    concurrency: int | None
    prefetch: int | None
    queues: tuple[str, ...]
    findings: tuple[Finding, ...] = ()
    live: dict[str, Any] | None = field(default=None)

    @property
    def exit_code(self) -> int:
        return 1 if any(f.severity == "error" for f in self.findings) else 0

    def to_dict(self) -> dict[str, Any]:
        from ._model import finding_to_dict

        return {
            "app": self.app, "argv": list(self.argv), "effective_pool": self.effective_pool,
            "patched": self.patched, "concurrency": self.concurrency, "prefetch": self.prefetch,
            "queues": list(self.queues), "findings": [finding_to_dict(f) for f in self.findings],
            "live": self.live,
        }


def _pool_name(pool: Any) -> str:
    """The short name (gevent, prefork, ...) of the pool class click gave back."""
    from celery import concurrency

    path = f"{pool.__module__}:{pool.__qualname__}"
    for name, alias_path in concurrency.ALIASES.items():
        if alias_path == path:
            return "prefork" if name == "processes" else str(name)
    return path


def _argv_pool(argv: list[str]) -> str | None:
    """The pool Celery's entry point sees when it decides whether to patch."""
    from celery import _find_option_with_arg

    try:
        return str(_find_option_with_arg(argv, ["-P"], ["--pool"]))
    except (KeyError, IndexError):
        return None


def _parse_worker_args(app: Any, args: list[str]) -> dict[str, Any]:
    """The worker's options exactly as `celery worker` parses them (env vars included)."""
    import click
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_group
    from celery.bin.worker import worker as worker_cmd

    parent = click.Context(celery_group, info_name="celery", auto_envvar_prefix="CELERY",
                           obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True))
    try:
        ctx = worker_cmd.make_context("worker", list(args), parent=parent)
    except click.ClickException as exc:
        raise DoctorError(f"the worker command line does not parse: {exc.format_message()}"
                          ) from None
    return dict(ctx.params)


def _config_line(app: Any, pattern: str) -> tuple[str | None, int | None]:
    """Where the app's own code sets a setting (the module defining the app first)."""
    regex = re.compile(pattern)
    modules = [sys.modules.get(app.main or "")] + [
        m for name, m in list(sys.modules.items())
        if m is not None and (app.main or "\0").split(".")[0] == name.split(".")[0]
    ]
    seen: set[str] = set()
    for module in modules:
        path = getattr(module, "__file__", None)
        if not path or path in seen or not path.endswith(".py"):
            continue
        seen.add(path)
        try:
            with open(path, encoding="utf-8") as fh:
                for number, text in enumerate(fh, start=1):
                    if regex.search(text) and not text.lstrip().startswith("#"):
                        return relative(path), number
        except OSError:
            continue
    return None, None


def _where(func: Any) -> tuple[str | None, int | None]:
    try:
        return relative(inspect.getsourcefile(func) or ""), inspect.getsourcelines(func)[1]
    except (OSError, TypeError):
        return None, None


def diagnose(app_spec: str, worker_args: list[str]) -> Diagnosis:
    """Read the app (without patching anything) and judge the worker command line."""
    from celery import Celery
    from celery.app.utils import find_app

    if not worker_args or worker_args[0] != "worker":
        raise DoctorError("give the worker's arguments after --, starting with `worker` "
                          "(e.g. -- worker -P gevent -c 80 -Q io)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = find_app(app_spec)
    except Exception as exc:
        raise DoctorError(f"cannot load app {app_spec!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(app, Celery):
        raise DoctorError(f"cannot load app {app_spec!r}: it is not a Celery app")
    argv = ["celery", "-A", app_spec, *worker_args]
    options = _parse_worker_args(app, worker_args[1:])
    try:
        load_tasks(app, app_spec)
    except AppLoadError as exc:
        raise DoctorError(str(exc)) from None
    pool = _pool_name(options["pool"])
    scanned = _argv_pool(argv)
    patched = scanned == "gevent"
    concurrency = options.get("concurrency") or setting(app, "worker_concurrency")
    prefetch = options.get("prefetch_multiplier") or setting(app, "worker_prefetch_multiplier")
    queues = tuple(options.get("queues") or ()) or (setting(app, "task_default_queue"),)
    findings = _findings(app, worker_args, pool, patched=patched, scanned=scanned,
                         concurrency=int(concurrency or 0))
    return Diagnosis(app_spec, tuple(worker_args), pool, patched,
                     int(concurrency) if concurrency else None,
                     int(prefetch) if prefetch is not None else None, queues, tuple(findings))


def _findings(app: Any, worker_args: list[str], pool: str, *, patched: bool,
              scanned: str | None, concurrency: int) -> list[Finding]:
    from celery import signals

    out: list[Finding] = []
    conf_pool = setting(app, "worker_pool")
    attached = [a for a in worker_args if a.startswith("-P") and len(a) > 2]
    env_pool = os.environ.get("CELERY_WORKER_POOL")
    # what the command line (or its environment) asks click for, before the config
    requested = scanned or (attached[0][2:].lstrip("=") if attached else None) or env_pool
    file, line = _config_line(app, r"worker_pool\s*=|['\"]worker_pool['\"]|WORKER_POOL\s*=")
    if file:
        if requested and requested != "prefork":
            effect = (f"it is ignored: the command line's {requested} wins, and the worker "
                      f"runs the {pool} pool")
        else:
            effect = ("it decides: the command line gives no pool (or prefork, the default), "
                      f"so the worker runs the {pool} pool from this line")
        out.append(Finding(
            "pool-config", "error" if pool == "gevent" and not patched else "info",
            f"worker_pool is set to {conf_pool!r} in the app's code: {effect}",
            file=file, line=line,
            fix="choose the pool on the command line only (celery -A app worker -P gevent)"))
    if attached:
        out.append(Finding(
            "unpatched-worker", "error",
            f"{attached[0]!r}: click accepts the value attached, but Celery's patching scan "
            "looks for `-P gevent` or `--pool=gevent` and misses it: the worker runs the "
            f"{pool} pool without monkey-patching",
            fix=f"write it apart: -P {attached[0][2:]}"))
    if env_pool and scanned is None:
        out.append(Finding(
            "unpatched-worker", "error" if env_pool == "gevent" else "warning",
            f"CELERY_WORKER_POOL={env_pool} chooses the pool, but Celery patches only for a "
            f"-P/--pool on the command line: the {pool} pool runs unpatched",
            fix="pass -P gevent on the command line instead of the environment variable"))
    if pool == "gevent" and not patched and not attached and not (env_pool and scanned is None):
        out.append(Finding(
            "unpatched-worker", "error",
            "the worker will run the gevent pool without monkey-patching (the pool comes from "
            "the configuration, not from -P on the command line): it consumes messages and "
            "runs tasks one after another, or hangs; its banner still says gevent",
            fix="start it with -P gevent (or --pool=gevent) on the command line"))
    if pool == "gevent":
        out += _gevent_traps(app, worker_args, concurrency, signals)
    if (said := _bootstrap(app, pool, patched, concurrency)) is not None:
        out.append(said)
    return out


def _bootstrap(app: Any, pool: str, patched: bool, concurrency: int) -> Finding | None:
    """``geventcheck.patches.bootstrap(app)`` ran when the app loaded: what it will do here."""
    from .patches._bootstrap import ENV, BootstrapState, env_enabled, needed

    state = getattr(app, "_geventcheck_bootstrap", None)
    if not isinstance(state, BootstrapState):
        if not env_enabled():
            return None
        # the celery command bootstraps the app when it loads it (no line in celery.py)
        state = BootstrapState(None, via_env=True)
    via = (f"{ENV}=1 is set: the celery command runs geventcheck.patches.bootstrap(app)"
           if state.via_env else "geventcheck.patches.bootstrap(app) is in place")
    names = list(state.shims) if state.shims is not None else needed(concurrency or None)
    shims = ", ".join(f"geventcheck.patches.{n}" for n in names) or "no shim (none needed)"
    file = relative(state.file) if state.file else None
    if pool != "gevent":
        return Finding("bootstrap", "info",
                       f"{via}: on the {pool} pool it does nothing", file=file, line=state.line)
    if patched:
        return Finding("bootstrap", "info",
                       f"{via}: this gevent worker is patched, so it applies {shims} as the "
                       "app loads, before the tasks import their drivers",
                       file=file, line=state.line)
    return Finding("bootstrap", "warning",
                   f"{via}, but this worker runs the gevent pool unpatched: it will say so "
                   "loudly at start and apply no shim",
                   fix="start the worker with -P gevent on the command line",
                   file=file, line=state.line)


def _gevent_traps(app: Any, worker_args: list[str], concurrency: int,
                  signals: Any) -> list[Finding]:
    out: list[Finding] = []
    for name in _NEVER_SENT:
        for receiver in getattr(signals, name)._live_receivers(sender=None):
            func = getattr(receiver, "__func__", receiver)
            file, line = _where(func)
            qualname = getattr(func, "__qualname__", repr(func))
            if "celery" in (getattr(func, "__module__", "") or "").split(".")[0]:
                continue  # Celery's own (the Django fixup) know the pool
            out.append(Finding(
                "signal-never-sent", "error",
                f"{qualname}() is connected to {name}, which a gevent worker never sends "
                "(there is no child process): whatever it sets up never happens",
                file=file, line=line,
                fix="connect it to worker_init (sent once per worker process) or to "
                    "celeryd_init instead"))
    soft = setting(app, "task_soft_time_limit") or any(
        getattr(t, "soft_time_limit", None) for t in app.tasks.values())
    if soft:
        out.append(Finding(
            "time-limit", "warning",
            "soft time limits are set, and the gevent pool ignores them silently",
            fix="enforce deadlines in the task (timeouts on every call), or keep these tasks "
                "on prefork"))
    hard = setting(app, "task_time_limit") or any(
        getattr(t, "time_limit", None) for t in app.tasks.values())
    if hard:
        out.append(Finding(
            "time-limit", "warning",
            "hard time limits are set: on gevent they are a gevent.Timeout that fires only "
            "when the task yields, so a task blocked in C is never stopped",
            fix="fix blocking calls first (geventcheck audit), and give each call a timeout"))
    per_child = (setting(app, "worker_max_tasks_per_child")
                 or setting(app, "worker_max_memory_per_child")) or any(
        a.startswith(("--max-tasks-per-child", "--max-memory-per-child")) for a in worker_args)
    if per_child:
        out.append(Finding(
            "per-child-limit", "warning",
            "max_tasks_per_child / max_memory_per_child do nothing on the gevent pool: "
            "there are no child processes to recycle",
            fix="restart the worker from outside (a supervisor) if it leaks memory"))
    limit = setting(app, "broker_pool_limit")
    if limit is not None and concurrency and limit < concurrency:
        out.append(Finding(
            "pool-limit", "warning",
            f"broker_pool_limit is {limit}, below the concurrency {concurrency}: tasks that "
            "publish other tasks wait for a broker connection",
            fix=f"set broker_pool_limit to at least {concurrency} (or None)"))
    problem = backend_problem(app)
    if problem:
        out.append(Finding(BACKEND_KIND, "warning", problem, fix=BACKEND_FIX))
    for module in ("django.db", "psycopg", "psycopg2"):
        if module in sys.modules:
            out.append(Finding(
                "imported-before-patch", "info",
                f"{module} is imported when the app loads: fine when the worker is patched "
                "first (celery -A ... worker -P gevent), wrong with app.worker_main() or a "
                "custom entry point that imports the app before patching",
                fix="start workers with the celery command and -P gevent"))
    return out


def run_live(diagnosis: Diagnosis, *, timeout: float = 20.0) -> Diagnosis:
    """Start the real worker with this command line on a private queue, send it a probe task
    over the app's broker and read what the running process says about itself.

    The worker consumes only ``geventcheck.doctor.<uuid>`` (see _doctorlive): the app's
    queues and their messages are never read, and the queue is deleted afterwards.
    """
    import dataclasses
    import json
    import signal
    import subprocess
    import tempfile
    import time

    from celery.app.utils import find_app

    from . import _doctorlive

    app = find_app(diagnosis.app)
    name = _doctorlive.new_queue_name()
    ttl = timeout + 30.0  # outlives the wait; then the broker drops queue and probe itself
    queue = _doctorlive.private_queue(name, ttl)
    try:
        connection = app.connection_for_write()
        connection.ensure_connection(max_retries=1)
        queue(connection.default_channel).declare()
    except Exception as exc:
        raise DoctorError(f"--live: cannot reach the app's broker: {exc}") from None
    args = [*_doctorlive.private_worker_args(diagnosis.argv), "-Q", name,
            "--without-heartbeat", "--without-mingle", "--without-gossip",
            "-n", f"geventcheck-live-{os.getpid()}@%h"]
    live: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="geventcheck-live-") as tmp, connection:
        answer = os.path.join(tmp, "answer.json")
        log_path = os.path.join(tmp, "worker.log")
        env = {k: v for k, v in os.environ.items()
               if k not in _doctorlive.dropped_environment()}
        env |= {"GEVENTCHECK_TARGET_APP": diagnosis.app, _doctorlive.QUEUE_ENV: name,
                _doctorlive.TTL_ENV: str(ttl),
                "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "geventcheck._liveprobe", *args],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        try:
            try:
                app.send_task("geventcheck.live_probe", args=[answer], queue=queue,
                              exchange=queue.exchange, routing_key=name, declare=[queue],
                              expires=ttl, ignore_result=True, connection=connection)
            except Exception as exc:
                raise DoctorError(f"--live: cannot reach the app's broker: {exc}") from None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not os.path.exists(answer):
                if worker.poll() is not None:
                    break
                time.sleep(0.1)
            if os.path.exists(answer):
                with open(answer) as fh:
                    live = json.load(fh)
                live["ran_probe"] = True
            else:
                live = {"ran_probe": False,
                        "exit_code": worker.poll(),
                        "note": f"the worker did not run the probe task within {timeout:g} s"}
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(3)  # an unpatched gevent worker may never get to its shutdown
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
            try:
                _doctorlive.clean_up(connection, queue)
                live["queue"] = f"{name} (deleted)"
            except Exception as exc:  # the answer stands; say what may be left behind
                live["queue"] = f"{name} (not deleted: {exc}; the broker drops it after " \
                                f"{ttl:g} s unused)"
    findings = list(diagnosis.findings)
    if live.get("ran_probe") and live.get("patched") != diagnosis.patched:
        findings.append(Finding(
            "live-mismatch", "error",
            f"the running worker says patched={live.get('patched')}, the static answer was "
            f"{diagnosis.patched}: please report this"))
    return dataclasses.replace(diagnosis, live=live, findings=tuple(findings))
