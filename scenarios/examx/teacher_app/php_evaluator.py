"""Client of the legacy PHP evaluator (runs and scores PHP answers against test cases).

The evaluator speaks HTTP/1.0-style: it ignores keep-alive, sometimes omits
Content-Length and closes the connection when done. The team wrote this small
client on the C socket module after requests kept hanging on it.
"""

import _socket
import json
from urllib.parse import urlsplit


class EvaluatorError(RuntimeError):
    pass


def evaluate(base_url, payload, timeout=30.0):
    url = urlsplit(base_url)
    body = json.dumps(payload).encode()
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((url.hostname, url.port or 80))
        sock.sendall(b"POST " + (url.path.rstrip("/") + "/evaluate").encode() + b" HTTP/1.1\r\n"
                     b"Host: " + url.netloc.encode() + b"\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise EvaluatorError(f"evaluator answered {head[:80]!r}")
    return json.loads(content)
