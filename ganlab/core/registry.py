"""Choices by name: one registry per config group (`model`, `loss`, `optimizer`).

A group's YAML file says `name: <choice>`; the group's module registers one builder per
choice with `@REGISTRY.register("<choice>")`, and the job looks the builder up with
`REGISTRY.get(cfg.<group>.name)`. An unknown name is refused with the known ones, so
adding a choice is one builder plus one YAML file (docs/extending.md).
"""

from __future__ import annotations

from typing import Callable, TypeVar

from ganlab.core.errors import InputError

Builder = TypeVar("Builder", bound=Callable)


class Registry:
    """The builders of one config group, by the name a config selects them with."""

    def __init__(self, group: str):
        self.group = group
        self._builders: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Builder], Builder]:
        def add(builder: Builder) -> Builder:
            if name in self._builders:
                raise ValueError(f"{self.group} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return add

    def names(self) -> list[str]:
        return list(self._builders)

    def get(self, name) -> Callable:
        if name not in self._builders:
            raise InputError(f"{self.group}.name: got {name!r}; known choices: {', '.join(self.names())} "
                             f"(pick one with {self.group}=<choice>, e.g. {self.group}={self.names()[0]}).")
        return self._builders[name]
