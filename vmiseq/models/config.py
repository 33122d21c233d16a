"""``ModelConfig``: the one base of every model config (VMINet, MLLA, LM, forecaster, DLinear).

A config is a dataclass saved as JSON beside the weights (``save_pretrained``) and read back
with :meth:`ModelConfig.from_dict`, which refuses unknown keys so that a typo or a config of
another model fails loudly instead of being dropped. A subclass adds its fields, checks them
in ``__post_init__`` with the helpers below, and may rename keys of configs saved by older
versions in :meth:`ModelConfig._upgrade`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Optional, Sequence, TypeVar

C = TypeVar("C", bound="ModelConfig")


def is_int(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never a size here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_tuple(value: Any, name: str, what: str) -> tuple[int, ...]:
    """A sequence of ints, as a tuple; strings and floats are an error (never parsed or cut)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(is_int(v) for v in value):
        raise TypeError(f"{name}: expected {what}, got {value!r}")
    return tuple(int(v) for v in value)


def int_pair(value: Any, name: str) -> tuple[int, int]:
    """An int or an (H, W) pair of positive ints -> (H, W)."""
    if is_int(value):
        value = (value, value)
    value = int_tuple(value, name, "an int or an (H, W) pair of ints")
    if len(value) != 2:
        raise TypeError(f"{name}: expected an int or an (H, W) pair of ints, got {value!r}")
    h, w = value
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: expected positive sizes, got {(h, w)}")
    return h, w


@dataclasses.dataclass
class ModelConfig:
    """Base of the model configs: construction from a dict and shared field checks."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a dict (e.g. the saved JSON); unknown keys are an error."""
        data = cls._upgrade(dict(data))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"config: unknown {cls.__name__} fields {unknown} (unknown fields are refused, not dropped; "
                f"known: {sorted(known)})"
            )
        return cls(**data)

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Rename the keys of configs saved by older versions (none by default)."""
        return data

    @classmethod
    def resolve(cls: type[C], config: Optional[C], overrides: dict[str, Any]) -> C:
        """The config a model's ``__init__(config=None, **overrides)`` builds from: ``config``
        with ``overrides`` replaced, or the defaults with ``overrides``."""
        if config is None:
            return cls(**overrides)
        if not isinstance(config, cls):
            raise TypeError(f"config: expected an instance of {cls.__name__}, got {type(config).__name__}")
        return dataclasses.replace(config, **overrides) if overrides else config

    # ------------------------------------------------------------------ field checks
    def _check_positive_ints(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")

    def _check_bools(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")

    def _check_numbers(self, *names: str) -> None:
        """Finite real numbers (not bools)."""
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"{name}: expected a finite number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")

    def _check_rates(self, *names: str) -> None:
        """Probabilities in [0, 1) (dropout, drop-path rates)."""
        self._check_numbers(*names)
        for name in names:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {getattr(self, name)!r}")

    def _check_choice(self, name: str, choices: Sequence[Any]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
