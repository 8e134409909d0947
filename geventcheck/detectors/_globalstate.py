"""Process-wide state a task changes and holds while other tasks run (``global-state``).

Under prefork a process runs one task at a time, so the working directory,
``os.environ``, ``sys.stdout``, logging levels and module globals are in effect
the task's own. On a gevent worker the tasks running at once share them: a
change still in place when the task waits leaks into every other task, and a
module global read before a wait and written after it loses the other copies'
updates.

During the probe run this probe compares the process state with a baseline on
every switch out of a task copy (a greenlet trace function chained to the hub
monitor's). An audit hook and a few temporary wrappers record the line that made
each change. The module globals that the task's own code writes are found in its
bytecode (the task function and the app functions it calls, two levels deep), and
each copy is watched while it is switched out between a read and a write of one.
Everything changed is put back in ``end`` so the next task starts clean.
"""

from __future__ import annotations

import contextlib
import locale
import logging
import os
import random
import signal
import socket
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import greenlet

from .._model import Finding
from ._bytecode import (
    Access,
    Global,
    GlobalWrite,
    Site,
    app_site,
    fingerprint,
    global_writes,
    show,
    shown_path,
    task_function,
)
from ._probe import ProbeRun
from ._snapshot import FIXES, WATCHED_SIGNALS, Change, describe, diff, equal, family, restore, take

KIND = "global-state"

# ---------------------------------------------------------------------------
# The audit hook: one per process, it cannot be removed, so it consults _RECORDER
# ---------------------------------------------------------------------------

_AUDIT_EVENTS = frozenset({"os.chdir", "os.putenv", "os.unsetenv"})
_RECORDER: Probe | None = None
_HOOK_INSTALLED = False


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in _AUDIT_EVENTS:
        return
    recorder = _RECORDER
    if recorder is None:
        return
    try:
        key = "cwd" if event == "os.chdir" else "env:" + os.fsdecode(args[0])
        recorder.note(key, sys._getframe(1))
    except Exception:  # an audit hook that raises aborts the audited call
        return


def _install_audit_hook() -> None:
    global _HOOK_INSTALLED
    if not _HOOK_INSTALLED:
        sys.addaudithook(_audit_hook)
        _HOOK_INSTALLED = True



# ---------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------


@dataclass
class _Held:
    change: Change
    switch: Site | None
    made: Site | None


@dataclass
class _Confirmed:
    before: Any
    after: Any
    switch: Site | None


_INHERITED = object()  # the wrapped attribute came from a base class


class Probe:
    """Watches one task's probe run for process state and module globals it shares."""

    kinds: tuple[str, ...] = (KIND,)

    def __init__(self) -> None:
        # Created once per audited process, before any task ran: the state to go back to.
        self._clean = take()
        self._baseline = self._clean
        self._run: ProbeRun | None = None
        self._active = False
        self._rebased = False
        self._leftover: list[Change] = []
        self._trace_fn: Callable[[str, Any], None] = self._trace
        self._previous_trace: Any = None
        self._installed = False  # our trace is in the chain (maybe under a later probe's)
        self._patches: list[tuple[Any, str, Any, Any]] = []
        self._reset()
        _install_audit_hook()

    def _reset(self) -> None:
        self._held: dict[str, _Held] = {}
        # the last line that changed each key, per greenlet, and by anyone (under None)
        self._sites: dict[str, dict[Any, Site]] = {}
        self._seeds: dict[Any, Site | None] = {}
        self._seed_held: dict[Any, tuple[Site | None, Site | None]] = {}
        self._writes: list[GlobalWrite] = []
        self._initial: dict[Global, Any] = {}
        self._pending: dict[Any, list[tuple[GlobalWrite, Any, Site | None]]] = {}
        self._confirmed: dict[int, _Confirmed] = {}

    # -- recording ---------------------------------------------------------------
    def note(self, key: str, frame: types.FrameType | None) -> None:
        """A call that changes ``key`` was made at ``frame``; keep the app line."""
        run = self._run
        if run is None or not self._active:
            return
        site = app_site(frame, run.roots)
        if site is None:
            return
        glet = greenlet.getcurrent()
        sites = self._sites.setdefault(key, {})
        sites[glet] = sites[None] = site
        if key == "random seed" and run.is_task_greenlet(glet):
            self._seeds.setdefault(glet, site)

    def _site_of(self, key: str, glet: Any) -> Site | None:
        sites = self._sites.get(key, {})
        return sites.get(glet) or sites.get(None)

    def _wrap(self, owner: Any, attr: str, key_of: Callable[..., str | None]) -> None:
        """Record the caller's line of ``owner.attr`` while the probe is on."""
        original = getattr(owner, attr, None)
        if original is None:
            return
        own = not isinstance(owner, type) or attr in vars(owner)
        note = self.note

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with contextlib.suppress(Exception):
                key = key_of(*args, **kwargs)
                if key is not None:
                    note(key, sys._getframe(1))
            return original(*args, **kwargs)

        setattr(owner, attr, wrapper)
        self._patches.append((owner, attr, original if own else _INHERITED, wrapper))

    def _install_wrappers(self) -> None:
        signals = {getattr(signal, n): n for n in WATCHED_SIGNALS if hasattr(signal, n)}
        self._wrap(random, "seed", lambda *a, **k: "random seed")
        self._wrap(os, "umask", lambda *a, **k: "umask")
        self._wrap(locale, "setlocale", lambda *a, **k: "locale"
                   if (a[1:] and a[1] is not None) or k.get("locale") is not None else None)
        self._wrap(socket, "setdefaulttimeout", lambda *a, **k: "socket timeout")
        extensions = sys.modules.get("psycopg2.extensions")  # psycogreen's patch_psycopg()
        if extensions is not None:
            self._wrap(extensions, "set_wait_callback", lambda *a, **k: "psycopg2 wait callback")
        self._wrap(signal, "signal", lambda sig, *a, **k: f"signal:{signals[sig]}"
                   if sig in signals else None)
        self._wrap(logging.Logger, "setLevel", lambda logger, *a, **k: "root level"
                   if logger is logging.getLogger() else f"logger level:{logger.name}")
        redirect = getattr(contextlib, "_RedirectStream", None)  # redirect_stdout/stderr
        if redirect is not None:
            self._wrap(redirect, "__enter__", lambda stream, *a, **k: f"sys.{stream._stream}")

    def _remove_wrappers(self) -> None:
        for owner, attr, original, wrapper in reversed(self._patches):
            if getattr(owner, attr, None) is not wrapper:
                continue  # wrapped again by someone else since: theirs to undo
            if original is _INHERITED:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)
        self._patches = []

    # -- the greenlet trace ------------------------------------------------------
    def _trace(self, event: str, args: Any) -> None:
        previous = self._previous_trace
        if previous is not None:
            previous(event, args)
        if not self._active:
            if self._installed and greenlet.gettrace() is self._trace_fn:
                # left as a pass-through under another probe's trace, now back on top
                greenlet.settrace(previous)
                self._previous_trace, self._installed = None, False
            return
        run = self._run
        if run is None or event not in ("switch", "throw"):
            return
        try:
            origin, target = args
            if not self._rebased and run.is_task_greenlet(target):
                # First switch into a copy: nothing of the task ran yet, and every other
                # probe has done its setup. This is the state the copies start from.
                self._baseline = take()
                self._rebased = True
            if run.is_task_greenlet(origin) and not origin.dead:
                self._switched_out(run, origin)
            if run.is_task_greenlet(target):
                self._resumed(target)
        except Exception:  # a trace function must never break a switch
            return

    def _switched_out(self, run: ProbeRun, glet: Any) -> None:
        switch_site: Site | None = None
        located = False
        for change in diff(self._baseline, take()):
            if change.key in self._held:
                continue
            if not located:
                switch_site, located = app_site(glet.gr_frame, run.roots), True
            self._held[change.key] = _Held(change, switch_site, self._site_of(change.key, glet))
        if glet in self._seeds and glet not in self._seed_held:
            self._seed_held[glet] = (self._seeds[glet], app_site(glet.gr_frame, run.roots))
        for write in self._writes:
            if write.read is None:
                continue
            lo, hi = write.window
            frame = glet.gr_frame
            while frame is not None and frame.f_code is not write.code:
                frame = frame.f_back
            if frame is not None and lo < frame.f_lasti < hi:
                self._pending.setdefault(glet, []).append((
                    write, fingerprint(write.glob.value()), app_site(glet.gr_frame, run.roots)))

    def _resumed(self, glet: Any) -> None:
        for write, before, switch_site in self._pending.pop(glet, ()):
            now = fingerprint(write.glob.value())
            if id(write) not in self._confirmed and not equal(before, now):
                self._confirmed[id(write)] = _Confirmed(before, now, switch_site)

    # -- begin / end -----------------------------------------------------------------
    def begin(self, run: ProbeRun) -> None:
        """Start from the clean state, then watch every switch out of a copy."""
        self._reset()
        # What the measured runs of this task left behind; put back so the copies start clean.
        self._leftover = diff(self._clean, take())
        restore(self._leftover)
        self._baseline = take()
        self._rebased = False
        try:
            self._writes = global_writes(task_function(run.task), run.roots)
        except Exception:  # unusual bytecode must not cost the rest of the probe
            self._writes = []
        self._initial = {w.glob: fingerprint(w.glob.value()) for w in self._writes}
        self._run = run
        self._install_wrappers()
        global _RECORDER
        _RECORDER = self
        if not self._installed:  # else still in the chain, under a probe that chained to us
            self._previous_trace = greenlet.settrace(self._trace_fn)
            self._installed = True
        self._active = True

    def end(self, run: ProbeRun, outcomes: list[dict[str, Any]]) -> list[Finding]:
        """Stop watching, put the baseline back, and say what was shared."""
        self._active = False
        global _RECORDER
        _RECORDER = None
        if greenlet.gettrace() is self._trace_fn:
            greenlet.settrace(self._previous_trace)
            self._previous_trace, self._installed = None, False
        # else a later probe chained to our trace: ours stays a pass-through until it is
        # back on top, and is reused rather than installed twice (that would loop)
        self._remove_wrappers()
        left = diff(self._baseline, take())
        restore(left)
        if self._seeds:
            random.seed()  # the original again: fresh entropy, as at start
        findings = self._state_findings(run, left)
        findings += self._seed_findings()
        findings += self._global_findings(run)
        self._run = None
        self._reset()  # drop the greenlets and values this run held on to
        return findings

    # -- findings --------------------------------------------------------------------
    def _state_findings(self, run: ProbeRun, left: list[Change]) -> list[Finding]:
        left_by_key = {c.key: c for c in left}
        groups: dict[Site | None, list[str]] = {}
        severities: dict[Site | None, str] = {}
        families: dict[Site | None, list[str]] = {}
        for key, held in self._held.items():
            where = held.made or held.switch
            text = held.change.describe()
            if held.made is not None:
                text += f" at {held.made}"
            if held.switch is not None:
                text += (f", and was still changed when the task switched away at "
                         f"{held.switch} ({held.switch.function})")
            else:
                text += ", and was still changed when the task switched away"
            text += _consequence(key)
            final = left_by_key.get(key)
            if final is not None:
                text += f"; after the run it was left {describe(key, final.after)}"
            groups.setdefault(where, []).append(text)
            severities[where] = "error"
            families.setdefault(where, []).append(family(key))
        for change in left:
            if change.key in self._held:
                continue
            where = self._site_of(change.key, None)
            text = change.describe() + (f" at {where}" if where else "")
            text += (f" and was not put back by the end of the run ({run.concurrency} "
                     "copies): every task that runs after it in this process inherits it")
            groups.setdefault(where, []).append(text)
            severities.setdefault(where, "warning")
            families.setdefault(where, []).append(family(change.key))
        reported = {c.key for c in left} | set(self._held)
        leftover = [c for c in self._leftover if c.key not in reported]
        if leftover:
            texts = [c.describe() for c in leftover]
            groups.setdefault(None, []).append(
                "; ".join(texts) + " after the task's measured runs, and was not put back "
                "(geventcheck restored it before the probe run)")
            severities.setdefault(None, "warning")
            families.setdefault(None, []).extend(family(c.key) for c in leftover)
        findings = []
        for where, texts in groups.items():
            fixes = list(dict.fromkeys(FIXES.get(f, "") for f in families[where]))
            findings.append(Finding(
                KIND, "error" if severities[where] == "error" else "warning",
                "; ".join(texts),
                file=shown_path(where.file) if where else None,
                line=where.line if where else None,
                function=where.function if where else None,
                fix="; ".join(f for f in fixes if f) or None, phase="probe"))
        return findings

    def _seed_findings(self) -> list[Finding]:
        """One finding is enough, every copy seeds alike: the worst copy's."""
        findings = []
        for glet, made in sorted(self._seeds.items(), key=lambda i: i[0] not in self._seed_held):
            held = self._seed_held.get(glet)
            switch = held[1] if held else None
            text = "seeded the global random generator" + (f" at {made}" if made else "")
            if held is not None:
                text += (f" and then switched away at {switch}" if switch else
                         " and then switched away")
                text += (": the other tasks draw from the same generator meanwhile, so this "
                         "task's sequence is not reproducible and theirs becomes predictable")
            else:
                text += (": every task running in the process draws from that generator, so "
                         "their random values become predictable")
            findings.append(Finding(
                KIND, "error" if held is not None else "warning", text,
                file=shown_path(made.file) if made else None, line=made.line if made else None,
                function=made.function if made else None, fix=FIXES["random seed"],
                phase="probe"))
            break
        return findings

    def _global_findings(self, run: ProbeRun) -> list[Finding]:
        findings = []
        for write in self._writes:
            glob = write.glob
            w_site = write.site(write.write)
            start, final = self._initial.get(glob), fingerprint(glob.value())
            confirmed = self._confirmed.get(id(write))
            if write.pattern == "read-then-write" and write.read is not None:
                assigns = write.write.how == "="
                text = (f"module global {glob.label} is read at {_at(write.read)}, then a "
                        f"call that may switch to another task (line {write.call_line}), then "
                        + (f"written at {_at(write.write)} from what was read" if assigns
                           else f"changed at {_at(write.write)} "
                                f"({_statement(glob, write.write.how)})"))
                outcome = ("this write overwrote that update (a lost update)" if assigns else
                           "this change acted on what it read before (a check-then-act race)")
                if confirmed is not None:
                    text += (f": another copy changed it from {_describe_fp(confirmed.before)} "
                             f"to {_describe_fp(confirmed.after)} while this one was switched "
                             f"out at {confirmed.switch}, and {outcome}")
                else:
                    text += (": on a gevent worker other copies run in between, and "
                             + outcome.replace("this", "the", 1))
            elif write.pattern == "write-then-read" and write.read is not None:
                text = (f"module global {glob.label} is written at {_at(write.write)} and "
                        f"read back at {_at(write.read)} after a call that may switch to "
                        f"another task (line {write.call_line})")
                if confirmed is not None:
                    text += (f": another copy changed it from {_describe_fp(confirmed.before)} "
                             f"to {_describe_fp(confirmed.after)} while this one was switched "
                             f"out at {confirmed.switch}, so the read saw the other task's value")
                else:
                    text += ": on a gevent worker the read may see another task's value"
            else:
                text = (f"{_how(glob, write.write.how)} at line "
                        f"{write.write.line}: under prefork a process runs one task at a "
                        "time, but on a gevent worker every concurrent task shares it")
            if start is not None and not equal(start, final):
                text += (f"; over the probe run ({run.concurrency} copies at once) it went "
                         f"from {_describe_fp(start)} to {_describe_fp(final)}")
            findings.append(Finding(
                KIND, "error" if confirmed is not None else "warning", text,
                file=shown_path(w_site.file), line=w_site.line, function=w_site.function,
                fix="keep per-task state in local variables, arguments and return values; "
                    "if it must be shared, hold a gevent.lock.Semaphore around the whole "
                    "read-modify-write (or use an atomic store: Redis INCR, an SQL UPDATE)",
                phase="probe"))
        return findings


def _how(glob: Global, how: str) -> str:
    """``writes module global x.COUNT`` / ``mutates module global x.CACHE (CACHE[...] = ...)``."""
    if how in ("=", "del"):
        return f"{'assigns' if how == '=' else 'deletes'} module global {glob.label}"
    return f"mutates module global {glob.label} ({_statement(glob, how)})"


def _at(access: Access) -> str:
    """``line 12``, or ``line 12 (in set_user())`` for an access a called helper makes."""
    helper = f" (in {access.how[4:]})" if access.how.startswith("via ") else ""
    return f"line {access.line}{helper}"


def _statement(glob: Global, how: str) -> str:
    """The kind of statement that wrote a global: ``CACHE[...] = ...``, ``ITEMS.append(...)``."""
    if how.startswith("via "):
        return f"{how[4:]} writes {glob.name}"
    if how == "del [...]":
        return f"del {glob.name}[...]"
    if how == "=":
        return f"{glob.name} = ..."
    if how.endswith("()"):
        return f"{glob.name}{how[:-2]}(...)"
    return f"{glob.name}{how} ..."


def _describe_fp(fp: Any) -> str:
    """A fingerprint as a value for a message."""
    if isinstance(fp, tuple) and len(fp) >= 2:
        kind = fp[0]
        if kind == "value":
            return show(fp[1])
        if kind in ("dict", "list", "set", "object") and len(fp) == 3:
            return show(fp[2])
    return "another object"


def _consequence(key: str) -> str:
    """Why holding this across a switch hurts, in a few words."""
    kind = family(key)
    if kind == "stdio":
        return (": every task that ran meanwhile wrote into that stream, and tasks that "
                "restore it out of order leave it pointing at a dead buffer")
    if kind == "cwd":
        return ": every task that ran meanwhile resolved relative paths against it"
    if kind == "env":
        return ": every task that ran meanwhile (and every child process it started) saw it"
    return ": every task that ran meanwhile in this process used it too"
