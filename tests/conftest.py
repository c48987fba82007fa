"""Test set-up: 8 virtual CPU devices, set before jax is imported anywhere; compiled programs
released after each test module."""

import gc
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module. XLA's CPU executables hold memory
    mappings; the whole suite in one process used to pass the kernel's `vm.max_map_count`
    (65,530) and crash inside a later compile (a segfault or abort, at about 74 % of the run)."""
    yield
    jax.clear_caches()
    gc.collect()
