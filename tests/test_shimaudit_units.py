"""The pure parts of --with-shims: which shims, which tasks, and the words of before -> after."""

from __future__ import annotations

import fnmatch

import pytest

from geventcheck._model import (
    Driver,
    Environment,
    Finding,
    Report,
    Settings,
    ShimSection,
    Stats,
    TaskReport,
)
from geventcheck._plan import make_plan, render_markdown
from geventcheck._shimaudit import (
    before_text,
    choose,
    escape_glob,
    merge,
    outcomes,
    parse,
    shims_for,
)

PG_STALL = Finding("unsafe-driver", "error", "psycopg2 blocks the hub: blocked the hub for 210 "
                   "ms in psycopg2 cur.execute (libpq, _psycopg) waiting in poll() on "
                   "127.0.0.1:5432", native="psycopg2 cur.execute (libpq, _psycopg) waiting "
                   "in poll()", duration_ms=210.0)


def _task(name: str, verdict: str, *findings: Finding) -> TaskReport:
    return TaskReport(name, "celery", verdict, "io", "gevent", Stats(1, 200.0, 2.0, 0.0),  # type: ignore[arg-type]
                      findings)


def _report(*tasks: TaskReport, drivers: tuple[Driver, ...] = (), shims: tuple[str, ...] = ()
            ) -> Report:
    return Report("0", "now", "proj", Settings(shims=shims),
                  Environment("3.11", "26", True, drivers=drivers), tasks)


def test_parse_accepts_auto_and_known_names_only() -> None:
    assert parse("auto") == ("auto",)
    assert parse(" psycopg2, mysqldb ") == ("psycopg2", "mysqldb")
    with pytest.raises(ValueError, match="unknown shim 'auto2'"):
        parse("auto2")
    with pytest.raises(ValueError, match="expected 'auto'"):
        parse(" , ")


def test_auto_chooses_a_shim_per_blocking_driver_and_a_small_redis_pool() -> None:
    drivers = (Driver("psycopg2", "blocking"), Driver("MySQLdb", "shimmed"),
               Driver("redis", "cooperative", fix="size the pool"), Driver("requests",
                                                                           "cooperative"),
               Driver("pylibmc", "blocking"))
    assert choose(("auto",), _report(drivers=drivers)) == ("psycopg2", "redis")
    # one given with --shim is already there
    assert choose(("auto",), _report(drivers=drivers, shims=("psycopg2",))) == ("redis",)


def test_only_no_go_tasks_blamed_on_a_chosen_shim_are_audited_again() -> None:
    assert shims_for(_task("a", "no-go", PG_STALL), ("psycopg2",)) == ("psycopg2",)
    assert shims_for(_task("a", "no-go", PG_STALL), ("mysqldb",)) == ()
    assert shims_for(_task("a", "go", PG_STALL), ("psycopg2",)) == ()


def test_before_and_after_words_and_the_merged_report() -> None:
    before = _report(_task("proj.q", "no-go", PG_STALL), _task("proj.other", "go"))
    assert before_text(before.tasks[0]) == "no-go: psycopg2 blocking in poll()"
    after = _report(_task("proj.q", "go"))
    found = outcomes(before, after, {"proj.q": ("psycopg2",)})
    assert [(o.before, o.after, o.after_reason, o.fixed) for o in found] == [
        ("no-go", "go", "go with geventcheck.patches.psycopg2", True)]
    merged = merge(before, after, ShimSection(("auto",), ("psycopg2",), tuple(found)))
    assert [t.verdict for t in merged.tasks] == ["go", "go"]
    assert merged.tasks[0].reason == ("go with geventcheck.patches.psycopg2 (without: no-go: "
                                      "psycopg2 blocking in poll())")
    markdown = render_markdown(merged, make_plan(merged))
    assert "| `proj.q` | no-go: psycopg2 blocking in poll() | go with " \
           "geventcheck.patches.psycopg2 |" in markdown
    assert "geventcheck.patches.bootstrap(app)" in markdown


@pytest.mark.parametrize("name", ["proj.tasks.a", "proj.t[1]", "proj.*star?", "x[!y]"])
def test_a_task_name_glob_matches_only_itself(name: str) -> None:
    pattern = escape_glob(name)
    assert fnmatch.fnmatchcase(name, pattern)
    assert not fnmatch.fnmatchcase(name + "x", pattern)
    assert not fnmatch.fnmatchcase("proj.tasks.b", pattern)
