"""Module globals written, then read back after a wait: proven races and near-misses.

``time.sleep`` is cooperative once patched, so the other copies run during it.
The marker comments name the lines the tests expect in the findings.
"""

import time
import uuid

from .celery import app

CURRENT_USER = None
REQUEST_ID = None
MODE = "slow"


def set_current_user(user):
    global CURRENT_USER
    CURRENT_USER = user  # the helper's write


def current_user():
    return CURRENT_USER  # the helper's read


@app.task
def user_set_by_a_helper_read_after_a_wait():
    me = uuid.uuid4().hex
    set_current_user(me)  # the helper call that writes
    time.sleep(0.01)  # the helper wait
    return len(current_user())  # the helper call that reads


@app.task
def request_id_read_after_a_wait():
    global REQUEST_ID
    REQUEST_ID = uuid.uuid4().hex  # the request id write
    time.sleep(0.01)  # the request id wait
    return len(REQUEST_ID)  # the request id read


@app.task
def same_mode_for_everyone():
    """A near-miss: every copy writes the same value, so no copy ever reads another's."""
    global MODE
    MODE = "fast"  # the mode write
    time.sleep(0.01)
    return MODE  # the mode read
