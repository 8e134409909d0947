"""Results that change under concurrency, and values that merely vary (ids, clocks)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from geventcheck.detectors._divergence import learn_volatile, normalize

from .conftest import APPS


def test_a_lost_update_race_is_divergence_and_uuids_are_not(audit) -> None:
    result = audit("-A", "hazards", "--task", "*dedupe_batch", "--task", "*stamp_and_id",
                   "--runs", "2", "-c", "4", cwd=APPS)
    race = result.task(".dedupe_batch")
    assert race["verdict"] == "no-go"
    [finding] = [f for f in race["findings"] if f["kind"] == "concurrency-divergence"]
    assert "where alone, with the same input, it gave 1" in finding["message"]
    varies = result.task(".stamp_and_id")
    assert varies["verdict"] == "go", varies["findings"]
    assert "concurrency-divergence" not in {f["kind"] for f in varies["findings"]}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_a_result_is_never_volatile_against_itself(value) -> None:
    mask = learn_volatile(value, value)
    assert normalize(value, mask) == normalize(value)


@given(json_values, json_values)
def test_the_learned_mask_makes_two_solo_results_agree(a, b) -> None:
    mask = learn_volatile(a, b)
    assert normalize(a, mask) == normalize(b, mask)


def _reserve_scenario(tmp_path) -> str:
    path = tmp_path / "s.toml"
    path.write_text(f'app = "hazards"\nworkdir = "{APPS}"\n'
                    '[tasks."hazards.tasks.reserve_last_item"]\n'
                    'calls = [{ args = [0] }, { args = [10] }, { args = [20] }]\n')
    return str(path)


def test_exploring_schedules_finds_a_race_the_natural_interleaving_hides(audit,
                                                                        tmp_path) -> None:
    scenario = _reserve_scenario(tmp_path)
    common = ("--scenario", scenario, "--task", "*reserve_last_item", "--runs", "3", "-c", "3")
    calm = audit(*common, "--explore", "0", cwd=tmp_path)
    assert "concurrency-divergence" not in calm.kinds(".reserve_last_item")
    for _ in range(2):  # found again from the printed seed
        hunted = audit(*common, "--explore", "20", "--explore-seed", "7", cwd=tmp_path)
        task = hunted.task(".reserve_last_item")
        assert task["verdict"] == "no-go"
        [finding] = [f for f in task["findings"] if f["kind"] == "concurrency-divergence"]
        assert "under the schedule [copy" in finding["message"]
        assert "--explore-seed 7" in finding["message"]
        assert "'sold out'" in finding["message"] and "'reserved'" in finding["message"]
