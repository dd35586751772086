"""Name -> factory registries, so components are chosen by name from params/ instead of if-chains.

Each entry may declare a pydantic model for its parameters; configs are validated against it before
any job starts, and an unknown name fails with the list of allowed ones.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown name in a registry; the message lists the allowed names."""

    def __init__(self, kind: str, name: str, allowed: list[str]):
        self.kind, self.name, self.allowed = kind, name, allowed
        super().__init__(f"unknown {kind} {name!r}; allowed: {', '.join(allowed)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class NoParams(BaseModel):
    """Parameters of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    params: type[BaseModel]
    doc: str


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, params: type[BaseModel] = NoParams) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
            self._entries[name] = Entry(name, factory, params, doc)
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def validate_params(self, name: str, params: dict[str, Any] | None) -> BaseModel:
        return self.get(name).params.model_validate(params or {})

    def create(self, name: str, params: dict[str, Any] | None = None, **context: Any) -> T:
        """Build `name` from validated `params` plus the run-time `context` values its factory accepts
        (e.g. num_classes, embedding_dim)."""
        entry = self.get(name)
        validated = entry.params.model_validate(params or {})
        signature = inspect.signature(entry.factory)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        accepted = {k: v for k, v in context.items() if takes_any or k in signature.parameters}
        return entry.factory(**validated.model_dump(), **accepted)
