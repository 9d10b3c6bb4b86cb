"""One registry per extensible concept: a name -> entry table that config validation, the CLI's choices,
the docs and the builders all read.

Adding a sampler, an objective, a recipe, a dataset, a task, a conditioner or a block option means registering
one entry in its own module (``SAMPLERS``, ``OBJECTIVES``, ``RECIPES``, ``DATASETS``, ``TASKS``, ``CONDITIONERS``,
``NORMS``...); nothing else lists names. A registry reads like a read-only mapping of names to values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from maskdit.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered thing: its name, the object itself, a one-line summary and free-form facts."""

    name: str
    value: T
    summary: str
    facts: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """An ordered ``name -> Entry`` table for one concept (``kind``, used in error messages)."""

    def __init__(self, kind: str, key: str | None = None):
        self.kind = kind
        self.key = key or kind  #: the config key or option that names an entry, for messages
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str = "", **facts: Any) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name", "what it is", fact=...)`` on a function or class."""

        def add(value: T) -> T:
            self.add(name, value, summary, **facts)
            return value

        return add

    def add(self, name: str, value: T, summary: str = "", **facts: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        doc = (getattr(value, "__doc__", None) or "").strip().splitlines()
        self._entries[name] = Entry(name, value, summary or (doc[0] if doc else ""), facts)

    def remove(self, name: str) -> None:
        """Drop an entry (for tests and plug-ins that register temporarily)."""
        del self._entries[name]

    def names(self, **facts: Any) -> tuple[str, ...]:
        """Registered names in order, optionally only those whose facts match (``objective="flow"``)."""
        return tuple(e.name for e in self._entries.values()
                     if all(_matches(e.facts.get(k), v) for k, v in facts.items()))

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}: {self.key} must be one of {one_of(self.names())}")
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).value

    __getitem__ = get

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, value)`` pairs in order, as a dict gives them."""
        return ((e.name, e.value) for e in self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        """``(name, summary)`` rows, for ``--help`` texts and docs."""
        return [(e.name, e.summary) for e in self._entries.values()]


def _matches(have: Any, want: Any) -> bool:
    if isinstance(have, (tuple, list, set, frozenset)):
        return want in have
    return have == want


def one_of(names: tuple[str, ...] | list[str]) -> str:
    """``('a', 'b', 'c')`` -> ``'a, b or c'``."""
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} or {names[-1]}"
