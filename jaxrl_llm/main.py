"""The CLI: `python -m jaxrl_llm.main --config=configs/<recipe>.py[:arg] --workdir=DIR [--config.a.b=v]`.

`--seeds=0,1,2 --workdirs=D0 --workdirs=D1 --workdirs=D2` instead of `--workdir` runs those
seeds (`train.seed`) as one vmapped program, each written to its own run directory
(`trainers/seeds.py`).

The config is locked (an unknown override key fails at once) and validated before anything is
compiled. The run resumes from the workdir's last complete checkpoint. Multi-host: pass
`--coordinator_address`, `--num_processes`, `--process_id` (or set nothing on a TPU pod, where
`jax.distributed.initialize()` discovers them).

`--config.a.b=VALUE` (or `--config.a.b VALUE`; `--config.a.b` / `--noconfig.a.b` for a boolean)
sets one field, converted to its type. `--helpconfig` lists every field with its value, the
one-line help and what it allows (with `--config=...`, that recipe's values). A bad field or
value exits with status 2 and one line, `config error: config.<field> = <value> <what is
allowed>`, before anything is built; a run stopped by non-finite updates exits with status 3.
INFO logs of orbax, absl, jax and transformers are hidden unless `--verbosity=1`.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, provenance).")
_SEEDS = flags.DEFINE_list(
    "seeds",
    None,
    "Vmapped seeds: run these values of train.seed as one "
    "program (tiny models, one device); needs --workdirs.",
)
_WORKDIRS = flags.DEFINE_multi_string(
    "workdirs",
    None,
    "With --seeds: a run directory per seed, "
    "the flag repeated once per seed, in the order of --seeds.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host)."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HELPCONFIG = flags.DEFINE_bool(
    "helpconfig",
    False,
    "List every config field (with --config: that recipe's values) with its help and exit.",
)

# `--config.a.b=v` overrides, taken out of argv before absl parses it (see `run`).
_OVERRIDE = re.compile(r"^--(no)?config\.([A-Za-z_][\w.]*)(=(.*))?$", re.DOTALL)
_OVERRIDES = []
_QUIET_LOGGERS = ("orbax", "absl", "jax._src", "tensorboardX", "datasets", "transformers")


def split_overrides(argv):
    """(argv without the config overrides, [(field, text or None), ...]) in command-line order.

    `--config.a.b=v` and `--config.a.b v` give ("a.b", "v"); a bare `--config.a.b` gives
    ("a.b", None) (True for a boolean) and `--noconfig.a.b` gives ("a.b", "false").
    """
    rest, overrides, i = [], [], 0
    while i < len(argv):
        m = _OVERRIDE.match(argv[i]) if i else None
        if not m:
            rest.append(argv[i])
        elif m.group(1):
            overrides.append((m.group(2), "false"))
        elif m.group(3) is not None:
            overrides.append((m.group(2), m.group(4)))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            overrides.append((m.group(2), argv[i + 1]))
            i += 1
        else:
            overrides.append((m.group(2), None))
        i += 1
    return rest, overrides


def quiet_logs(verbosity: int) -> None:
    """Only warnings from the libraries' loggers (orbax, absl, jax, ...) unless `verbosity` >= 1."""
    if verbosity >= 1:
        return
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _config_error(e):
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
    """absl's flag parsing; a recipe that fails to load is a one-line config error (status 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        if not message.startswith("flag --config="):
            return app.parse_flags_with_usage(argv)  # absl's own report
        where = message.split(":", 1)[0]
        last = [line for line in message.splitlines() if line.strip()][-1].strip()
        _config_error(f"{where[len('flag ') :]}: {last}")


def _loaded(config):
    """`config`, or a config error when its recipe file could not be read."""
    try:
        config.keys()  # config_flags defers a file's IOError to the first access
    except OSError:
        path = config_flags.get_config_filename(flags.FLAGS["config"])
        _config_error(f"--config={path}: cannot read the recipe file {path.split(':', 1)[0]}")
    return config


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    quiet_logs(flags.FLAGS.verbosity)
    from jaxrl_llm.trainers import config as config_lib  # pylint: disable=g-import-not-at-top

    config = _CONFIG.value
    if config is not None:
        config = _loaded(config)
    if _HELPCONFIG.value:
        print(config_lib.describe(config))
        return
    if config is None:
        raise app.UsageError("--config is required (configs/<recipe>.py[:arg])")
    try:
        for key, text in _OVERRIDES:
            config_lib.apply_override(config, key, text)
        config_lib.validate(config)
    except config_lib.ConfigError as e:
        _config_error(e)
    if _SEEDS.value and not _WORKDIRS.value:
        raise app.UsageError("--seeds needs --workdirs (one run directory per seed)")
    if _WORKDIR.value is None and not _SEEDS.value:
        raise app.UsageError("--workdir is required")

    from jaxrl_llm.parallel import multihost  # pylint: disable=g-import-not-at-top

    if _DISTRIBUTED.value or _COORDINATOR.value or multihost.distributed_kwargs():
        # flags, else $JAXRL_COORDINATOR_ADDRESS / $JAXRL_NUM_PROCESSES / $JAXRL_PROCESS_ID,
        # else jax's own cluster detection (TPU pods, SLURM, Open MPI)
        multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from jaxrl_llm.trainers import rl  # pylint: disable=g-import-not-at-top

    try:
        if _SEEDS.value:
            from jaxrl_llm.trainers import seeds  # pylint: disable=g-import-not-at-top

            seeds.train_seeds(config, _WORKDIRS.value, [int(s) for s in _SEEDS.value])
        else:
            rl.train(config, _WORKDIR.value)
    except config_lib.ConfigError as e:
        _config_error(e)
    except rl.TrainingStopped as e:
        print(str(e), file=sys.stderr)
        sys.exit(3)


def run(argv=None):
    argv, _OVERRIDES[:] = split_overrides(sys.argv if argv is None else argv)
    # config_flags reads sys.argv itself for `--config.` overrides: it sees none.
    sys.argv = argv
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
