"""The name -> function tables that guidance options live in (variants, schedules): adding one is one entry."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def registrar(table: dict[str, F]) -> Callable[[str], Callable[[F], F]]:
    """register(name): a decorator that files the function it decorates in ``table`` under ``name``."""
    def register(name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            table[name] = fn
            return fn
        return deco
    return register
