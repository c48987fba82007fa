"""The CLI: `python -m jaxrl_llm.main --config=configs/<recipe>.py[:arg] --workdir=DIR [--config.a.b=v]`.

`--seeds=0,1,2 --workdirs=D0 --workdirs=D1 --workdirs=D2` instead of `--workdir` runs those
seeds (`train.seed`) as one vmapped program, each written to its own run directory
(`trainers/seeds.py`).

The config is locked (an unknown override key fails at once) and validated before anything is
compiled. The run resumes from the workdir's last complete checkpoint. Multi-host: pass
`--coordinator_address`, `--num_processes`, `--process_id` (or set nothing on a TPU pod, where
`jax.distributed.initialize()` discovers them).
"""

from __future__ import annotations

import logging
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


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from jaxrl_llm.parallel import multihost  # pylint: disable=g-import-not-at-top

    if _DISTRIBUTED.value or _COORDINATOR.value or multihost.distributed_kwargs():
        # flags, else $JAXRL_COORDINATOR_ADDRESS / $JAXRL_NUM_PROCESSES / $JAXRL_PROCESS_ID,
        # else jax's own cluster detection (TPU pods, SLURM, Open MPI)
        multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from jaxrl_llm.trainers import config as config_lib  # pylint: disable=g-import-not-at-top
    from jaxrl_llm.trainers import rl  # pylint: disable=g-import-not-at-top

    config = _CONFIG.value
    if _SEEDS.value and not _WORKDIRS.value:
        raise app.UsageError("--seeds needs --workdirs (one run directory per seed)")
    if _WORKDIR.value is None and not _SEEDS.value:
        raise app.UsageError("--workdir is required")
    try:
        if _SEEDS.value:
            from jaxrl_llm.trainers import seeds  # pylint: disable=g-import-not-at-top

            seeds.train_seeds(config, _WORKDIRS.value, [int(s) for s in _SEEDS.value])
        else:
            rl.train(config, _WORKDIR.value)
    except config_lib.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except rl.TrainingStopped as e:
        print(str(e), file=sys.stderr)
        sys.exit(3)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
