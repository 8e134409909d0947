"""Tasks that start processes, two of which reach for an outside address.

192.0.2.1 is TEST-NET-1 (RFC 5737): never a real host. The tests run these tasks
inside a network namespace of their own, with a trap listening on that address,
so whatever gets past geventcheck lands in the trap's log and nowhere else.
The marker comments name the lines the tests expect in the findings.
"""

import os
import subprocess
import sys

from .celery import app

PYTHON_CONNECT = ("import socket\n"
                  "socket.create_connection(('192.0.2.1', 80), timeout=5).close()\n")


@app.task
def shell_child_reaches_out():
    done = subprocess.run(["bash", "-c", "exec 3<>/dev/tcp/192.0.2.1/80"],  # the shell line
                          capture_output=True, timeout=20)
    return done.returncode


@app.task
def python_child_reaches_out():
    done = subprocess.run([sys.executable, "-c", PYTHON_CONNECT],  # the python line
                          capture_output=True, timeout=20)
    return done.returncode


@app.task
def lists_a_folder():
    done = subprocess.run(["ls", "/"], capture_output=True, check=True)  # the ls line
    return len(done.stdout) > 0


@app.task
def exits_with_codes():
    status = os.system("exit 4")  # the system line
    code = os.spawnv(os.P_WAIT, "/bin/sh", ["sh", "-c", "exit 3"])  # the spawn line
    return [status, code]
