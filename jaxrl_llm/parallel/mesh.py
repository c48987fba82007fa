"""A device mesh with axes (data, fsdp, tensor), all `AxisType.Auto`.

jax 0.10's `jax.make_mesh` defaults to Explicit axes, which reject the FSDP
contractions of a GSPMD-style program; every axis here is `Auto`.

Sizes: `make_mesh({"data": 1, "fsdp": -1, "tensor": 1})`; one axis may be
`-1` and takes the devices the others leave. Axes left out have size 1.
Parameters whose dimension a mesh axis does not divide are replicated along
that axis (see `jaxrl_llm.parallel.axes.logical_to_sharding`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

from jaxrl_llm.parallel.axes import MESH_AXES

__all__ = ["make_mesh", "resolve_mesh_shape"]


def resolve_mesh_shape(shape: Mapping[str, Any], num_devices: int) -> tuple[int, ...]:
    """Axis sizes in `MESH_AXES` order, `-1` filled in; errors name the numbers."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; allowed: {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}"
        )
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes (product {fixed}) do not "
                f"divide the {num_devices} devices"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} has {fixed} devices but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(shape: Mapping[str, Any] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """Mesh over `devices` (default: all) with axes `("data", "fsdp", "tensor")`, all Auto.

    `shape` is a dict or `ml_collections.ConfigDict` of axis sizes (missing
    axes = 1, one axis may be -1). Default: all devices on `fsdp`.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = {"fsdp": -1} if shape is None else dict(shape.items())
    sizes = resolve_mesh_shape(shape, len(devices))
    types = (AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(sizes, MESH_AXES, axis_types=types, devices=devices)
