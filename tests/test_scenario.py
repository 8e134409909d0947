"""Scenario files: inputs reach the tasks, and every mistake is one line with its place."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from geventcheck._scenario import ScenarioError, load_scenario

from .conftest import APPS


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_inputs_from_the_scenario_run_a_task_that_needs_arguments(audit, tmp_path) -> None:
    scenario = _write(tmp_path, f"""
        app = "hazards"
        workdir = "{APPS}"

        [tasks."hazards.tasks.needs_args"]
        calls = [{{ args = [7] }}, {{ args = [8], kwargs = {{ mode = "slow" }} }}]
        """)
    result = audit("--scenario", str(scenario), "--task", "*needs_args", "--runs", "2",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    task = result.task(".needs_args")
    assert task["verdict"] == "go"
    # warm-up, two solo runs and four concurrent copies, all with scenario inputs
    assert task["stats"]["runs"] == 2 + 4


def test_env_from_the_scenario_reaches_the_audited_process(audit, tmp_path) -> None:
    app = tmp_path / "envapp.py"
    app.write_text(textwrap.dedent("""
        import os
        from celery import Celery
        app = Celery("envapp", broker="memory://")

        @app.task
        def needs_token():
            if os.environ.get("API_TOKEN") != "s3cret":
                raise RuntimeError("API_TOKEN missing")
        """))
    scenario = _write(tmp_path, """
        app = "envapp"
        [env]
        API_TOKEN = "s3cret"
        """)
    result = audit("--scenario", str(scenario), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.task(".needs_token")["verdict"] == "go"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('app = "hazards"\ncolour = "blue"\n', ":2: unknown key 'colour' in the scenario"),
        ('app = 3\n', ":1: app must be a string, got int 3"),
        ('app = "hazards"\n[tasks."x"]\ncalls = [{ argz = [1] }]\n',
         ":3: unknown key 'argz' in a call of 'x'"),
        ('app = "hazards"\n[tasks."x"]\ncalls = [{ args = 1 }]\n',
         ":3: args of 'x' must be an array"),
        ('app = "hazards"\n[tasks."x"]\ncalls = []\n', ":2: task 'x' has no calls"),
        ('app = "hazards"\n[env]\nURL = "{openai.url}"\n', ":3: env.URL uses {openai.url}"),
        ('app = "hazards"\npaths = ["no/such/dir"]\n',
         ":2: paths entry 'no/such/dir' is not a folder"),
        ('app = [\n', "not valid TOML"),
        ('app = "hazards"\n[bench]\ntasks = []\n', ":3: bench.tasks is empty"),
        ('app = "hazards"\n[bench]\ntasks = "a.b"\n', ":3: bench.tasks must be an array"),
        ('app = "hazards"\n[bench]\ntasks = ["a", 2]\n',
         ":3: an entry of bench.tasks must be a string, got int 2"),
        ('app = "hazards"\n[bench]\ntasks = ["a"]\ncount = 0\n',
         ":4: bench.count must be above zero"),
        ('app = "hazards"\n[bench]\ntasks = ["a"]\ncount = "9"\n',
         ":4: bench.count must be an integer"),
        ('app = "hazards"\n[bench]\ntasks = ["a"]\ncpu_tsk = "b"\n',
         ":4: unknown key 'cpu_tsk' in [bench]"),
        ('app = "hazards"\n[bench]\ncount = 3\n', ":2: [bench] needs tasks = [...]"),
    ],
)
def test_scenario_mistakes_name_the_file_and_line(tmp_path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(str(path))
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


def test_the_bench_batch_is_read_with_its_defaults(tmp_path) -> None:
    path = _write(tmp_path, 'app = "hazards"\n[bench]\ntasks = ["a.io", "b.io"]\n'
                            'cpu_task = "c.cpu"\n')
    bench = load_scenario(str(path)).bench
    assert bench is not None
    assert (bench.tasks, bench.count, bench.cpu_task) == (("a.io", "b.io"), 400, "c.cpu")
    assert load_scenario(str(_write(tmp_path, 'app = "hazards"\n'))).bench is None


def test_unknown_task_is_exit_2_with_the_line_and_a_suggestion(audit, tmp_path) -> None:
    scenario = _write(tmp_path, f"""
        app = "hazards"
        workdir = "{APPS}"

        [tasks."hazards.tasks.need_args"]
        calls = [{{ args = [1] }}]
        """)
    result = audit("--scenario", str(scenario), cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"{scenario}:5: task 'hazards.tasks.need_args' is not a task of the app" in line
    assert "did you mean 'hazards.tasks.needs_args'" in line


def test_missing_scenario_file_is_exit_2(audit, tmp_path) -> None:
    result = audit("--scenario", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "cannot read the scenario" in line


def test_shipped_scenarios_and_the_readme_example_follow_the_schema() -> None:
    """Editors complete scenario files from the schema: it must accept what we ship."""
    import json
    import re
    import tomllib

    import jsonschema

    from .conftest import ROOT

    schema = json.loads((ROOT / "geventcheck" / "schemas" / "scenario.schema.json").read_text())
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Scenarios.*?```toml\n(.*?)```", readme, re.S)
    assert example, "the README lost its scenario example"
    documents = [tomllib.loads(example[1])]
    documents += [tomllib.loads(p.read_text()) for p in ROOT.glob("scenarios/*/scenario.toml")]
    documents += [tomllib.loads((APPS / "svcapp" / "scenario.toml").read_text())]
    for document in documents:
        jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"app": "x", "colour": "blue"}, schema)
