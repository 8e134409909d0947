"""Each task stands for a kind of work real apps do; the audit should tell them apart."""

import ctypes
import hashlib
import os
import subprocess
import time

from .celery import app

_libc = ctypes.CDLL(None)


@app.task
def send_welcome_email() -> str:
    """Waits on the network the cooperative way (time.sleep is patched): fine on gevent."""
    time.sleep(0.08)
    return "sent"


@app.task
def export_report_with_subprocess() -> int:
    """subprocess is patched too: the hub keeps running while the child works."""
    return subprocess.run(["sleep", "0.05"], check=True).returncode


@app.task
def render_invoice_pdf() -> int:
    """Pure-Python layout work: 150 ms of CPU with no chance to yield."""
    deadline = time.perf_counter() + 0.15
    pages = 0
    while time.perf_counter() < deadline:
        pages += sum(i * i for i in range(200)) % 7
    return pages


@app.task
def hash_passwords() -> str:
    """A key-derivation function in C: CPU-bound even though it releases the GIL."""
    return hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 300_000).hex()


@app.task
def thumbnail_with_native_lib() -> int:
    """A C library that sleeps (waits) natively: the hub cannot run meanwhile."""
    return _libc.usleep(120_000)


@app.task
def nightly_shell_report() -> int:
    """os.system is not patched: the whole worker waits for the shell."""
    return os.system("sleep 0.1")


@app.task
def greet_user(user_id: int) -> str:
    """Needs an argument: the audit skips it until a scenario gives inputs."""
    return f"hello {user_id}"
