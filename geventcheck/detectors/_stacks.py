"""Stacks of the audited thread, taken the way CPython itself does it for hung threads.

Walking another thread's frames from Python (``sys._current_frames()`` and
``f_back``) crashed the audited process on 3.11 now and then (FIELD-NOTES §7).
``faulthandler`` reads the frames in C and writes them to a file descriptor, so
the watcher never holds a frame object of the audited thread. It reads them
only while it holds the GIL, when they stand still: faulthandler's watchdog
thread (which reads them without the GIL) crashed the process when it fired
while the audited thread ran Python.
"""

from __future__ import annotations

import faulthandler
import os
import re
from dataclasses import dataclass

# faulthandler's frame limit is 100; the findings need far fewer.
MAX_DEPTH = 40

_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+|\?\?\?) in (.*)$')


@dataclass(frozen=True)
class FrameInfo:
    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


def parse_dump(text: str, ident: int) -> tuple[FrameInfo, ...]:
    """The frames (innermost first) of thread ``ident`` in a faulthandler dump.

    When the dump holds several sections for that thread (a watchdog that fired
    more than once), the last one is where the thread is now.
    """
    frames: list[FrameInfo] = []
    found: list[FrameInfo] | None = None
    current: list[FrameInfo] | None = None
    for line in text.splitlines():
        head = _THREAD.match(line)
        if head:
            current = [] if int(head.group(1), 16) == ident else None
            if current is not None:
                found = current
            continue
        frame = _FRAME.match(line)
        if frame and current is not None and len(current) < MAX_DEPTH:
            number = frame.group(2)
            current.append(FrameInfo(frame.group(1), int(number) if number.isdigit() else 0,
                                     frame.group(3).strip()))
    frames = found or []
    return tuple(frames)


def parse_current(text: str) -> tuple[FrameInfo, ...]:
    """The frames (innermost first) of the thread a fatal-signal dump calls "Current
    thread": the one that crashed."""
    head = re.search(r"^Current thread (0x[0-9a-fA-F]+)", text, flags=re.MULTILINE)
    return parse_dump(text, int(head.group(1), 16)) if head else ()


class _DumpFile:
    """An anonymous file faulthandler writes into and this module reads back."""

    def __init__(self, name: str) -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.file = os.fdopen(self.fd, "w", closefd=False)

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self) -> str:
        size = self.size()
        return os.pread(self.fd, size, 0).decode(errors="replace") if size else ""

    def close(self) -> None:
        self.file.close()
        os.close(self.fd)


class StackReader:
    """One thread's Python stack, read by faulthandler while the caller holds the GIL.

    Holding the GIL, the caller knows the audited thread runs no Python code, so
    its frames stand still while faulthandler reads them.
    """

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self._out = _DumpFile("geventcheck-stack")

    def read(self) -> tuple[FrameInfo, ...]:
        # Nothing may let go of the GIL before the dump (os.ftruncate, os.lseek and a
        # file object's flush all do): the audited thread would run on, and a stack read
        # the moment GIL-holding native code returned would no longer show its line. So
        # the dump goes to the bare descriptor, and the file is emptied after reading.
        faulthandler.dump_traceback(file=self._out.fd, all_threads=True)
        text = self._out.read()
        self._out.clear()
        return parse_dump(text, self.ident)

    def close(self) -> None:
        self._out.close()
