"""Tasks that start processes, two of which reach for an outside address.

192.0.2.1 is TEST-NET-1 (RFC 5737), but a machine may still route it (some use it
as their gateway). The tests run these tasks inside a network namespace of their
own, with a trap listening on that address, and say so in CHILDREN_TRAP; without
it the two tasks that reach out refuse to, so an audit run by hand sends nothing.
The marker comments name the lines the tests expect in the findings.
"""

import os
import subprocess
import sys

from .celery import app


def _inside_the_tests_namespace():
    if os.environ.get("CHILDREN_TRAP") != "192.0.2.1":
        raise RuntimeError("run only by tests/test_children.py, inside its network namespace")


PYTHON_CONNECT = ("import socket\n"
                  "socket.create_connection(('192.0.2.1', 80), timeout=5).close()\n")


@app.task
def shell_child_reaches_out():
    _inside_the_tests_namespace()
    done = subprocess.run(["bash", "-c", "exec 3<>/dev/tcp/192.0.2.1/80"],  # the shell line
                          capture_output=True, timeout=20)
    return done.returncode


@app.task
def python_child_reaches_out():
    _inside_the_tests_namespace()
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
