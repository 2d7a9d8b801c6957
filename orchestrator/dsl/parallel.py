"""Parallel branches: `parallel` and `map_parallel`, and how their branches' changes join.

A fork is one step of its workflow. Every branch starts from a copy of the state at the fork and runs its own
steps; at the join each branch's changes (keys it added, changed or removed, against the fork state) are applied
in branch order (`parallel`) or collected in item order under `result_key` (`map_parallel`). The functions here
are pure: the runtime decides when branches run and records them (`runtime/branches.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.dsl.results import Process
from orchestrator.dsl.steps import Step, StepContext, StepList
from orchestrator.dsl.types import State
from orchestrator.exceptions import InvalidWorkflowError

ITEM = "item"
ITEM_INDEX = "item_index"
PATH_SEPARATOR = "/"
"""Separates the labels of nested branches in a step row's `branch` (`Outer[0]/Inner[2]`)."""

ItemsSource = str | Callable[[State], Sequence[Any]]


class JoinConflictError(Exception):
    """Two branches set one key to different values: the join fails instead of picking one."""


@dataclass(frozen=True)
class Branch:
    """One branch as it runs: its label (`name[index]`), its steps and the state it starts from."""

    label: str
    steps: StepList
    state: State


@dataclass(frozen=True)
class Changes:
    """What a branch did to the fork state: keys it set (added or changed) and keys it removed."""

    set: dict[str, Any]
    removed: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Fork:
    """The branches of one `parallel` (fixed `branches`) or `map_parallel` (`branch` once per element of `items`)."""

    name: str
    branches: tuple[StepList, ...] = ()
    items: ItemsSource | None = None
    branch: StepList | None = None
    result_key: str | None = None
    max_concurrency: int | None = None

    @property
    def is_map(self) -> bool:
        return self.branch is not None

    def label(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def expand(self, state: State) -> list[Branch]:
        """The branches to run from the fork state; ValueError when `items` does not give a list."""
        if self.branch is None:
            return [Branch(self.label(i), steps, dict(state)) for i, steps in enumerate(self.branches)]
        elements = self._elements(state)
        return [
            Branch(self.label(i), self.branch, {**state, ITEM: element, ITEM_INDEX: i})
            for i, element in enumerate(elements)
        ]

    def branch_labelled(self, state: State, label: str) -> Branch | None:
        """The one branch labelled `label` from the fork state (without copying the state for every sibling)."""
        prefix = f"{self.name}["
        index_text = label[len(prefix) : -1] if label.startswith(prefix) and label.endswith("]") else ""
        if not index_text.isdigit():
            return None
        index = int(index_text)
        if self.branch is None:
            return Branch(label, self.branches[index], dict(state)) if index < len(self.branches) else None
        elements = self._elements(state)
        if index >= len(elements):
            return None
        return Branch(label, self.branch, {**state, ITEM: elements[index], ITEM_INDEX: index})

    def _elements(self, state: State) -> list[Any]:
        source = self.items
        if isinstance(source, str):
            if source not in state:
                raise ValueError(f"map_parallel {self.name!r}: the state has no key {source!r} to take items from")
            elements = state[source]
        else:
            assert source is not None
            elements = source(state)
        if not isinstance(elements, list | tuple):
            raise ValueError(f"map_parallel {self.name!r}: items must be a list, got {type(elements).__name__}")
        return list(elements)

    def join(self, state: State, finals: Sequence[State]) -> State:
        """The process state after the join, from the fork state and each branch's final state (in order)."""
        if self.branch is None:
            labelled = [(self.label(i), changes(state, final)) for i, final in enumerate(finals)]
            return apply_changes(state, labelled)
        assert self.result_key is not None
        collected = [changes(state, final, ignore=(ITEM, ITEM_INDEX)).set for final in finals]
        return {**state, self.result_key: collected}


def changes(before: Mapping[str, Any], after: Mapping[str, Any], *, ignore: Sequence[str] = ()) -> Changes:
    """The keys `after` added or changed against `before`, and the keys it removed."""
    updated = {k: v for k, v in after.items() if k not in ignore and (k not in before or before[k] != v)}
    removed = tuple(k for k in before if k not in after and k not in ignore)
    return Changes(updated, removed)


def apply_changes(state: State, labelled: Sequence[tuple[str, Changes]]) -> State:
    """Apply each branch's changes in order; raise JoinConflictError when two branches disagree on a key."""
    merged = dict(state)
    decided: dict[str, tuple[str, bool, Any]] = {}  # key -> (branch, removed, value)
    for label, change in labelled:
        outcomes = [(k, False, v) for k, v in change.set.items()] + [(k, True, None) for k in change.removed]
        for key, removed, value in outcomes:
            earlier = decided.get(key)
            if earlier is not None and (earlier[1], earlier[2]) != (removed, value):
                raise JoinConflictError(
                    f"Branches {earlier[0]!r} and {label!r} of the join set key {key!r} to different values"
                )
            decided[key] = (label, removed, value)
            if removed:
                merged.pop(key, None)
            else:
                merged[key] = value
    return merged


def _branch_steps(name: str, branch: object) -> StepList:
    if isinstance(branch, Step):
        return StepList([branch])
    if isinstance(branch, StepList):
        if not branch:
            raise InvalidWorkflowError(f"A branch of {name!r} has no steps")
        return branch
    raise InvalidWorkflowError(f"A branch of {name!r} must be a Step or a StepList, got {type(branch).__name__}")


def _fork_step(fork: Fork) -> Step:
    if not fork.name or PATH_SEPARATOR in fork.name:
        raise InvalidWorkflowError(f"A parallel step needs a name without {PATH_SEPARATOR!r}, got {fork.name!r}")

    async def run(state: State, ctx: StepContext) -> Process:
        return await ctx.run_fork(fork, state)

    return Step(name=fork.name, func=run, fork=fork)


def parallel(name: str, *branches: Step | StepList) -> Step:
    """Run `branches` concurrently, each from a copy of the state; join their changes in branch order."""
    if not branches:
        raise InvalidWorkflowError(f"parallel {name!r} has no branches")
    return _fork_step(Fork(name, branches=tuple(_branch_steps(name, b) for b in branches)))


def map_parallel(
    name: str,
    items: ItemsSource,
    branch: Step | StepList,
    *,
    result_key: str,
    max_concurrency: int | None = None,
) -> Step:
    """Run `branch` once per element of `items` (a state key or a function of the state), the element injected as
    `item` and its position as `item_index`; store the list of each branch's changes under `result_key`."""
    if not (isinstance(items, str) or callable(items)):
        raise InvalidWorkflowError(f"map_parallel {name!r}: items must be a state key or a callable of the state")
    if not isinstance(result_key, str) or not result_key:
        raise InvalidWorkflowError(f"map_parallel {name!r}: result_key must be a non-empty string")
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
    ):
        raise InvalidWorkflowError(f"map_parallel {name!r}: max_concurrency must be a positive integer or None")
    fork = Fork(
        name,
        items=items,
        branch=_branch_steps(name, branch),
        result_key=result_key,
        max_concurrency=max_concurrency,
    )
    return _fork_step(fork)
