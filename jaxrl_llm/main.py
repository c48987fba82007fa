"""The CLI: `python -m jaxrl_llm.main --config=configs/<recipe>.py[:arg] --workdir=DIR [--config.a.b=v]`.

The config is locked (an unknown override key fails at once) and validated before anything is
compiled. The run resumes from the workdir's last complete checkpoint. Multi-host: pass
`--coordinator_address`, `--num_processes`, `--process_id` (or set nothing on a TPU pod, where
`jax.distributed.initialize()` discovers them).
"""
from __future__ import annotations

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, provenance).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host).")
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
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  try:
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
