"""The app's own suite: what a team already has, run with geventcheck's plugin."""

import os
import socket
import time

import pytest
from pluginapp.celery import app
from pluginapp.tasks import add, gil_sleep, greet, native_sleep, pg_sleep, spin, total


@pytest.fixture
def eager():
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def test_cooperative_sleep():
    time.sleep(0.2)  # cooperative once gevent patched the process
    assert greet("ada") == "hello ada!"


def test_calls_tasks(eager):
    assert add.delay(2, 3).get() == 5
    assert greet.apply_async(args=["grace"], kwargs={"punctuation": "?"}).get() == "hello grace?"
    assert total.apply(args=[[1, 2, 3]]).get() == 6
    assert total.apply(args=[{4, 5}]).get() == 9  # a set: JSON cannot carry it


def test_sends_tasks():
    assert add.delay(1, 1).id  # not eager: sent to the in-memory broker


def test_native_sleep():
    assert native_sleep(200) == 200


def test_cpu_spin():
    assert spin(12_000_000) == 12_000_000


def test_native_code_keeping_the_gil():
    assert gil_sleep(200) == 200


def test_psycopg2_without_psycogreen():
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.skip("PostgreSQL is not listening on 127.0.0.1:5432")
    assert pg_sleep(0.3) == 0.3


@pytest.mark.gevent_safe(allow=["blocking-call"])
def test_tolerated_native_sleep():
    assert native_sleep(200) == 200


@pytest.mark.gevent_unsafe(reason="the native sleep is known")
def test_known_unsafe():
    assert native_sleep(200) == 200


@pytest.mark.skipif("GEVENT_HANG" not in os.environ, reason="only when asked: it hangs")
def test_hangs_the_hub():
    native_sleep(10 ** 7)  # the endless native wait
