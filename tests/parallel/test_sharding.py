"""Row sharding decided by the rules alone: `batch_axes`, `row_sharding`, `batch_shards`."""

import logging

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

from jaxrl_llm import parallel
from jaxrl_llm.parallel import axes as A
from jaxrl_llm.parallel import sharding as S

# The default rules with `batch` on `data` only (e.g. FSDP groups that each see every row).
DATA_ONLY = ((A.BATCH, (A.DATA,)),) + tuple(r for r in A.DEFAULT_RULES if r[0] != A.BATCH)


def test_default_rules_split_rows_over_data_and_fsdp():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert parallel.batch_axes(mesh) == ("data", "fsdp")
    assert parallel.batch_shards(mesh) == 4
    assert parallel.row_sharding(mesh) == NamedSharding(mesh, PS(("data", "fsdp")))
    assert parallel.replicated(mesh) == NamedSharding(mesh, PS())


def test_custom_rules_batch_on_data_only_move_the_row_sharding():
    assert jax.device_count() == 8
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    assert parallel.batch_axes(mesh, DATA_ONLY) == ("data",)
    assert parallel.batch_shards(mesh, DATA_ONLY) == 2
    rows = parallel.row_sharding(mesh, DATA_ONLY)
    assert rows.spec == PS("data")
    x = jax.device_put(np.arange(24, dtype=np.float32).reshape(8, 3), rows)
    # 2 row blocks of 4 rows, each held whole by the 4 fsdp devices of its data group
    assert {s.data.shape for s in x.addressable_shards} == {(4, 3)}
    assert {s.index[0].start for s in x.addressable_shards} == {0, 4}
    # 6 rows divide the 2 data shards (not the 8 devices): accepted under these rules only
    parallel.check_batch_divides(6, mesh, DATA_ONLY)
    with pytest.raises(ValueError, match="6 rows do not divide over the 8 batch shards"):
        parallel.check_batch_divides(6, mesh)


def test_rules_as_a_config_gives_them_lists_and_batch_replicated():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    as_lists = [[name, list(axes) if isinstance(axes, tuple) else axes] for name, axes in DATA_ONLY]
    assert parallel.row_sharding(mesh, as_lists) == parallel.row_sharding(mesh, DATA_ONLY)
    no_batch = tuple(r for r in A.DEFAULT_RULES if r[0] != A.BATCH)
    assert parallel.batch_axes(mesh, no_batch) == ()
    assert parallel.batch_shards(mesh, no_batch) == 1
    assert parallel.row_sharding(mesh, no_batch).spec == PS(None)


def test_rows_argument_replicates_along_a_non_dividing_axis_with_a_warning(caplog):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    assert parallel.row_sharding(mesh, rows=16).spec == PS(("data", "fsdp"))
    with caplog.at_level(logging.WARNING):
        six = parallel.row_sharding(mesh, rows=6)  # 6 = 2 · 3: data kept, fsdp dropped
    assert six.spec == PS("data")
    assert "'fsdp' (size 4)" in caplog.text


def test_earlier_name_is_the_same_function():
    assert S.batch_sharding is S.row_sharding


def test_axis_sizes_without_devices_give_the_same_answers_as_the_mesh():
    """Config checks run before a mesh exists: a mapping of axis sizes stands in for it."""
    sizes = dict(zip(A.MESH_AXES, parallel.resolve_mesh_shape({"data": 2, "fsdp": -1}, 64)))
    assert parallel.batch_axes(sizes) == ("data", "fsdp")
    assert parallel.batch_shards(sizes) == 64
    assert parallel.batch_shards(sizes, DATA_ONLY) == 2
    parallel.check_batch_divides(6, sizes, DATA_ONLY)
    with pytest.raises(
        ValueError, match=r"over the 64 batch shards of the mesh \(data=2 \* fsdp=32\)"
    ):
        parallel.check_batch_divides(6, sizes, what="prompts_per_step")
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    assert parallel.batch_shards(dict(mesh.shape), DATA_ONLY) == parallel.batch_shards(
        mesh, DATA_ONLY
    )
