"""Each task stands for a kind of work real apps do; the audit should tell them apart."""

import ctypes
import hashlib
import json
import os
import smtplib
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from email.message import EmailMessage

from .celery import app

_libc = ctypes.CDLL(None)


@app.task
def send_welcome_email(user_email: str) -> str:
    """smtplib over the patched socket module: the hub runs while the server answers."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "hello@shop.example", user_email, "Welcome!"
    msg.set_content("Thanks for signing up.")
    with smtplib.SMTP(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"]), timeout=10) as s:
        s.send_message(msg)
    return "sent"


@app.task
def summarize_review(text: str) -> str:
    """An LLM API over HTTPS with urllib: cooperative once patched."""
    request = urllib.request.Request(
        os.environ["LLM_API_URL"] + "/v1/chat/completions",
        data=json.dumps({"messages": [{"role": "user", "content": text}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)["choices"][0]["message"]["content"]


@app.task
def record_signup(user_id: int) -> int:
    """A quick local SQLite write: light work, fine anywhere."""
    path = os.path.join(tempfile.gettempdir(), "geventcheck-demo.sqlite3")
    with sqlite3.connect(path, timeout=5) as db:
        db.execute("CREATE TABLE IF NOT EXISTS signups (user_id INTEGER, at REAL)")
        db.execute("INSERT INTO signups VALUES (?, ?)", (user_id, time.time()))
    return user_id


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
