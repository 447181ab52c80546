"""Typed configs to and from the JSON a checkpoint stores: the one reader of a stored dataclass."""
from __future__ import annotations

import dataclasses


def from_dict(cls, d: dict):
    """``cls`` (a dataclass) from a stored dict: JSON lists become tuples again, and a field the
    class does not have is an error that names it (a config of another version or a typo)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
