import json
import os
import smtplib
from email.message import EmailMessage
from urllib.parse import urlsplit

import requests

from .celery import app


@app.task
def ask_llm(question):
    reply = requests.post(
        "https://api.openai.com/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}]},
        timeout=10,
    )
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


@app.task
def ask_llm_raw_socket(question):
    """A hand-rolled client on the unpatched _socket module: it blocks the hub."""
    import _socket

    url = urlsplit(os.environ["PLAIN_API_URL"])
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    sock.connect((url.hostname, url.port))
    body = json.dumps({"q": question}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    while chunk := sock.recv(65536):  # the blocking wait
        data += chunk
    sock.close()
    return data.split(b"\r\n", 1)[0].decode()


@app.task
def send_receipt(to):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "shop@example.com", to, "Your receipt"
    msg.set_content("Thanks!")
    with smtplib.SMTP(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"]), timeout=10) as s:
        s.send_message(msg)
    return "sent"


def _pg_dsn():
    return (f"host={os.environ['PG_HOST']} port={os.environ['PG_PORT']} "
            "dbname=test user=postgres connect_timeout=10")


@app.task
def count_orders_psycopg3():
    import psycopg

    with psycopg.connect(_pg_dsn()) as conn:
        return conn.execute("SELECT 1 FROM pg_sleep(0.05)").fetchone()[0]


@app.task
def count_orders_psycopg2():
    import psycopg2

    conn = psycopg2.connect(_pg_dsn())
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1 FROM pg_sleep(0.05)")  # the blocking query
        return cur.fetchone()[0]
    finally:
        conn.close()


@app.task
def phone_home():
    """Reaches for a host the scenario does not configure."""
    return requests.get("https://telemetry.example.com/ping", timeout=5).status_code
