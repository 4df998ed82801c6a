"""The one registry convention: a table of named entries that a package fills with `register` and
reads with `get`, where an unknown name is one error naming the close matches and every choice.

    MASK_RULES = Registry("mask rule")

    @MASK_RULES.register("lighting")            # as a decorator: stores the function, returns it
    def lighting_mask(x, x_shift): ...

    PRESETS.register("flowers", FilterConfig(mask_rule="mean"))   # or as a call with the entry

    MASK_RULES.get("lightning")   # UnknownNameError: unknown mask rule 'lightning' (did you mean
                                  # lighting?); choose from lighting, mean
    "mean" in MASK_RULES, MASK_RULES.names(), sorted(MASK_RULES)

Mask rules, histogram rules and filter presets (masking.rules), benchmark datasets
(benchdata.datasets), named GANs (gans.loader), and metrics, evaluation protocols and evaluation
tasks (scoring) are registries. A registry is a read-only
mapping: `registry[name]` is `get(name)`. Registering a name twice is a bug in the code, not the
user's: a ValueError at import.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Callable, Generic, TypeVar, overload

from core.errors import UserError

__all__ = ["Registry", "UnknownNameError", "did_you_mean"]

T = TypeVar("T")
_NOTHING = object()


def did_you_mean(name: object, choices) -> str:
    """" (did you mean a, b?)" with the choices close to `name`, or "" when none is: the one hint of
    every "not in the list" message."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class UnknownNameError(UserError, KeyError):
    """A name no registry entry has; the message lists the close matches and every valid choice.
    A KeyError too, so `name in registry` and code that looks names up as keys work unchanged."""

    exit_code = 2  # core.cli.USAGE_EXIT_CODE: a name not in a list is a usage error, whoever finds it

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (`kind` names it in errors: "mask rule", "dataset", "GAN").

    `also`: spellings the registry's callers accept besides its names (benchdata's "folder:PATH"),
    listed after the names when a name is unknown."""

    def __init__(self, kind: str, *, also: tuple[str, ...] = ()):
        self.kind = kind
        self.also = tuple(also)
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name, entry=_NOTHING):
        """Store `entry` under `name` and return it; without `entry`, a decorator that does so."""
        if entry is _NOTHING:
            return lambda fn: self.register(name, fn)
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:  # type: ignore[override]  # no default: an unknown name is an error
        """The entry of `name`; raises UnknownNameError (one line: close matches, every choice)."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown(name)) from None

    def _unknown(self, name: object) -> str:
        return f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; choose from " \
               f"{', '.join([*self.names(), *self.also])}"

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
