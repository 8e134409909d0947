"""Tasks that start a long-lived process and return without waiting for it."""

import os
import subprocess

from celery import Celery

app = Celery("grandchild", broker="memory://")


@app.task
def starts_sleep():
    subprocess.Popen(["sleep", "60"])
    return "started"


@app.task
def starts_sleep_keeping_fds():
    # close_fds=False: the grandchild keeps every inheritable descriptor of the worker
    subprocess.Popen(["sleep", "60"], close_fds=False)
    return "started"


@app.task
def forks_sleeper():
    # a bare fork copies every descriptor, close-on-exec or not
    if os.fork() == 0:
        import time

        time.sleep(60)
        os._exit(0)
    return "forked"


@app.task
def zz_forks_then_exits():
    # the forked copy keeps the audit's channel open after the worker process is gone
    if os.fork() == 0:
        import time

        time.sleep(60)
        os._exit(0)
    os._exit(5)
