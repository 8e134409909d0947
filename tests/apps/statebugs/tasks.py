"""Tasks that hold process-wide state across a wait, each beside its fixed twin.

Every buggy task changes something the whole process shares and then waits
(``time.sleep`` is cooperative once patched, so the other copies run meanwhile).
The marker comments name the lines the tests expect in the findings.
"""

import contextlib
import io
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid

import gevent.lock

from .celery import app

START_DIR = os.getcwd()
START_STDOUT = sys.stdout
TOKEN = "STATEBUGS_TOKEN"

COUNT = 0
SAFE_COUNT = 0
COUNT_LOCK = gevent.lock.BoundedSemaphore()
LAST_RUN = None
REPORTS = {}


# -- the working directory ------------------------------------------------------------

@app.task
def chdir_across_wait():
    old = os.getcwd()
    os.chdir(tempfile.gettempdir())  # the chdir line
    time.sleep(0.02)  # the chdir wait
    os.chdir(old)
    return "ok"


@app.task
def chdir_restored_before_waiting():
    old = os.getcwd()
    os.chdir(tempfile.gettempdir())
    try:
        entries = len(os.listdir("."))
    finally:
        os.chdir(old)
    time.sleep(0.02)
    return entries >= 0


@app.task
def absolute_paths_instead_of_chdir():
    base = tempfile.gettempdir()
    entries = len(os.listdir(base))
    time.sleep(0.02)
    return entries >= 0


# -- os.environ ---------------------------------------------------------------------------

@app.task
def env_across_wait():
    os.environ[TOKEN] = "secret-for-this-task"  # the putenv line
    time.sleep(0.02)
    os.environ.pop(TOKEN, None)
    return "ok"


@app.task
def env_passed_to_subprocess():
    out = subprocess.run(["env"], env={**os.environ, TOKEN: "secret-for-this-task"},
                         capture_output=True, text=True, check=True)
    time.sleep(0.02)
    return TOKEN in out.stdout


# -- sys.stdout ---------------------------------------------------------------------------

@app.task
def redirect_stdout_across_wait():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # the redirect line
        print("starting")
        time.sleep(0.02)  # the redirect wait
        print("done")
    return "ok"


@app.task
def print_to_own_buffer():
    buf = io.StringIO()
    print("starting", file=buf)
    time.sleep(0.02)
    print("done", file=buf)
    return buf.getvalue().count("\n")


# -- module globals -----------------------------------------------------------------------

@app.task
def counter_across_wait():
    global COUNT
    c = COUNT  # the counter read
    time.sleep(0.01)
    COUNT = c + 1  # the lost update
    return "counted"


@app.task
def counter_in_a_local():
    count = 0
    for _ in range(3):
        count += 1
        time.sleep(0.005)
    return count


@app.task
def counter_under_a_gevent_lock():
    global SAFE_COUNT
    with COUNT_LOCK:
        c = SAFE_COUNT
        time.sleep(0.01)
        SAFE_COUNT = c + 1
    return "counted"


@app.task
def remembers_last_run():
    global LAST_RUN
    LAST_RUN = time.time()  # the global write
    time.sleep(0.01)
    return "ok"


@app.task
def returns_its_run_time():
    started = time.time()
    time.sleep(0.01)
    return round(time.time() - started, 0)


@app.task
def report_cache_across_wait():
    mine = uuid.uuid4().hex
    REPORTS["latest"] = mine  # the cache write
    time.sleep(0.01)
    return REPORTS["latest"] == mine  # the cache read


# -- the global random generator ---------------------------------------------------------

@app.task
def seeds_global_random():
    random.seed(1234)  # the seed line
    time.sleep(0.01)
    return "ok"


@app.task
def own_random_generator():
    rng = random.Random(1234)
    time.sleep(0.01)
    return rng.randint(0, 1000)


# -- nothing shared at all ----------------------------------------------------------------

@app.task
def ids_and_timestamps():
    time.sleep(0.01)
    return {"id": str(uuid.uuid4()), "at": time.time()}


@app.task
def zz_state_is_clean():
    """Audited after every other task (they run in name order): sees what they left."""
    problems = []
    if os.getcwd() != START_DIR:
        problems.append(f"cwd is {os.getcwd()}")
    if TOKEN in os.environ:
        problems.append(f"{TOKEN} is set")
    if sys.stdout is not START_STDOUT:
        problems.append(f"sys.stdout is {sys.stdout!r}")
    if problems:
        raise RuntimeError("; ".join(problems))
    time.sleep(0.005)
    return "clean"
