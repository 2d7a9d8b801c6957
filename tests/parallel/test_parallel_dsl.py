"""The parallel DSL without a database: validation, branch expansion and the join's semantics."""

from __future__ import annotations

import pytest

from orchestrator import StepList, map_parallel, parallel, step
from orchestrator.dsl.parallel import Changes, JoinConflictError, apply_changes, changes
from orchestrator.exceptions import InvalidWorkflowError


@step("A")
def a() -> dict[str, int]:
    return {"a": 1}


@step("B")
def b() -> dict[str, int]:
    return {"b": 2}


def test_parallel_keeps_each_branch_as_a_step_list() -> None:
    fork = parallel("Fan out", a, a >> b).fork
    assert fork is not None
    branches = fork.expand({"x": 1})
    assert [br.label for br in branches] == ["Fan out[0]", "Fan out[1]"]
    assert [[s.name for s in br.steps] for br in branches] == [["A"], ["A", "B"]]
    assert branches[0].state == {"x": 1} and branches[0].state is not branches[1].state


def test_map_parallel_injects_item_and_index_from_a_state_key_or_a_callable() -> None:
    by_key = map_parallel("Each", "ports", a, result_key="done").fork
    by_func = map_parallel("Each", lambda state: state["ports"][::-1], a, result_key="done").fork
    assert by_key is not None and by_func is not None
    state = {"ports": ["p1", "p2"]}
    assert [(br.state["item"], br.state["item_index"]) for br in by_key.expand(state)] == [("p1", 0), ("p2", 1)]
    assert [br.state["item"] for br in by_func.expand(state)] == ["p2", "p1"]
    assert by_key.expand({"ports": []}) == []


@pytest.mark.parametrize(
    ("state", "message"),
    [({}, "has no key 'ports'"), ({"ports": "p1"}, "items must be a list, got str")],
)
def test_map_parallel_items_that_are_no_list_are_a_clear_error(state: dict[str, object], message: str) -> None:
    fork = map_parallel("Each", "ports", a, result_key="done").fork
    assert fork is not None
    with pytest.raises(ValueError, match=message):
        fork.expand(state)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: parallel("Empty"), "has no branches"),
        (lambda: parallel("Bad", a, "b"), "must be a Step or a StepList, got str"),
        (lambda: parallel("Bad", a, StepList()), "has no steps"),
        (lambda: parallel("a/b", a), "without '/'"),
        (lambda: map_parallel("M", 5, a, result_key="r"), "items must be a state key or a callable"),
        (lambda: map_parallel("M", "xs", a, result_key=""), "result_key must be a non-empty string"),
        (lambda: map_parallel("M", "xs", a, result_key="r", max_concurrency=0), "max_concurrency must be"),
    ],
)
def test_invalid_definitions_are_refused_when_the_workflow_is_defined(build: object, message: str) -> None:
    with pytest.raises(InvalidWorkflowError, match=message):
        build()  # type: ignore[operator]


def test_forks_nest_and_compose_with_other_steps() -> None:
    inner = parallel("Inner", a, b)
    outer = parallel("Outer", inner, a >> map_parallel("Each", "xs", inner, result_key="r"))
    steps = a >> outer >> b
    assert [s.name for s in steps] == ["A", "Outer", "B"]
    assert outer.fork is not None and outer.fork.branches[0][0].fork is inner.fork


def test_changes_are_the_added_changed_and_removed_keys() -> None:
    assert changes({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 4}) == Changes({"b": 5, "d": 4}, ("c",))
    assert changes({"item": 1}, {"item": 2, "x": 1}, ignore=("item",)) == Changes({"x": 1}, ())


def test_join_applies_changes_in_branch_order() -> None:
    fork = parallel("P", a, b, a).fork
    assert fork is not None
    start = {"keep": 0, "gone": 1, "shared": 0}
    finals = [
        {"keep": 0, "shared": 7, "x": 1},  # removes `gone`, sets `shared`
        {"keep": 0, "gone": 1, "shared": 0, "y": 2},  # leaves `shared` alone
        {"keep": 0, "shared": 7},  # agrees with branch 0: no conflict
    ]
    assert fork.join(start, finals) == {"keep": 0, "shared": 7, "x": 1, "y": 2}


@pytest.mark.parametrize(
    ("second", "key"),
    [({"k": 2}, "k"), ({}, "r")],
)
def test_join_conflict_names_the_key_and_both_branches(second: dict[str, int], key: str) -> None:
    fork = parallel("P", a, b).fork
    assert fork is not None
    start = {"r": 0}
    first = {"r": 1, "k": 1}
    with pytest.raises(JoinConflictError, match=rf"Branches 'P\[0\]' and 'P\[1\]' .* key '{key}'"):
        fork.join(start, [first, {**start, **second} if key == "k" else second])


def test_map_join_stores_each_branch_changes_in_item_order() -> None:
    fork = map_parallel("Each", "xs", a, result_key="out").fork
    assert fork is not None
    start = {"xs": [10, 20]}
    finals = [{**br.state, "double": br.state["item"] * 2} for br in fork.expand(start)]
    assert fork.join(start, finals) == {"xs": [10, 20], "out": [{"double": 20}, {"double": 40}]}
    assert fork.join({"xs": []}, []) == {"xs": [], "out": []}


def test_apply_changes_with_no_branches_is_the_fork_state() -> None:
    assert apply_changes({"a": 1}, []) == {"a": 1}
