"""One process of a multi-process `Trainer` run (used by test_multiprocess_trainer.py).

    python tests/parallel/mp_trainer_worker.py --process_id=I --num_processes=2 \
        --coordinator_address=127.0.0.1:PORT --workdir=DIR --tokenizer=DIR --record=FILE

Without --num_processes it runs in one process on all local devices (the reference).
Records, for every sampler call, the prompts this process tokenised and fed.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys


class DigitsTask:
    """The arithmetic prompts, rewarded by the fraction of digits in the completion: an
    untrained model earns varied, non-zero rewards, so GRPO's gradients are not zero."""

    def __init__(self):
        from jaxrl_llm import tasks  # pylint: disable=g-import-not-at-top

        self._arith = tasks.make_task("arith")
        self.name = "digits"
        self.difficulties = self._arith.difficulties

    def examples(self, split, n, seed):
        return self._arith.examples(split, n, seed)

    def sft_target(self, example):
        return self._arith.sft_target(example)

    def reward(self, completion, example):
        del example
        return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


def make_task():
    return DigitsTask()


def trainer_config(
    tokenizer_dir: str,
    replay_fraction: float = 0.0,
    dynamic_sampling: bool = False,
    env: bool = False,
):
    """A tiny GRPO run: 3 steps of 8 prompts × 2 samples, mesh (data 2, fsdp -1), KL in the loss;
    with `replay_fraction`, that share of each batch's groups replayed from the buffer; with
    `dynamic_sampling`, DAPO's filter of all-equal groups (up to 3 sampler calls a step)."""
    from jaxrl_llm.trainers import config as config_lib  # pylint: disable=g-import-not-at-top

    c = config_lib.base_config(runlocal=True)
    c.unlock()
    c.tokenizer.path = tokenizer_dir
    c.train.steps = 3
    c.train.prompts_per_step = 8
    c.train.samples_per_prompt = 2
    c.train.microbatch_size = 8
    c.sft.steps = 0
    c.task.reward_workers = 0
    c.eval.size = 8
    c.checkpoint.every = 0
    c.log.progress = False
    c.log.samples = 0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, -1, 1
    c.algo.kl.coef = 0.01
    c.task.name = "tests.parallel.mp_trainer_worker:make_task"
    c.task.kwargs = {}
    c.optim.eps = 1.0  # Adam ≈ SGD here: no sign-like amplification of reordered sums
    c.optim.lr = 0.5
    c.data.replay_fraction = replay_fraction
    c.data.dynamic_sampling = dynamic_sampling
    c.data.max_attempts = 3
    if env:  # multi-turn calculator episodes instead of the digits task
        c.env.name = "calculator"
        c.env.kwargs = {"digits": (2,)}
        c.env.max_turns = 2
        c.env.max_observation_tokens = 8
        c.rollout.max_new_tokens = 24
        c.rollout.prompt_buckets = (256,)
        c.algo.entropy_coef = 0.01  # the untrained model's rewards are 0: entropy moves it
        c.algo.kl.coef = 0.0
        c.eval.n = 1
    return c


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--num_processes", type=int, default=0)
    parser.add_argument("--coordinator_address", default="")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--replay_fraction", type=float, default=0.0)
    parser.add_argument("--dynamic_sampling", action="store_true")
    parser.add_argument("--env", action="store_true", help="multi-turn calculator episodes")
    parser.add_argument(
        "--stack_dump_after",
        type=float,
        default=0.0,
        help="if > 0: print every thread's stack after this many seconds (and "
        "every such interval after), so a stuck run shows where it waits",
    )
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: stacks to the log
    if args.stack_dump_after > 0:
        faulthandler.dump_traceback_later(args.stack_dump_after, repeat=True)
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update("jax_default_matmul_precision", "highest")
    from jaxrl_llm.parallel import multihost  # pylint: disable=g-import-not-at-top

    if args.num_processes:
        multihost.initialize(
            args.coordinator_address, args.num_processes, args.process_id, initialization_timeout=60
        )
    from jaxrl_llm.trainers import rl  # pylint: disable=g-import-not-at-top

    fed, turns = [], []

    class RecordingTrainer(rl.Trainer):
        def prompt_batch(self, examples):
            fed.append([e.prompt for e in examples])
            return super().prompt_batch(examples)

        def collect(self, *args):
            out = super().collect(*args)
            components = out[5].get("components", {})  # info: host arrays on every process
            if "turns" in components:
                turns.append(float(max(components["turns"])))
            return out

    config = trainer_config(
        args.tokenizer, args.replay_fraction, args.dynamic_sampling, env=args.env
    )
    summary = RecordingTrainer(config, args.workdir).run(log=lambda *a: None)
    faulthandler.cancel_dump_traceback_later()
    with open(args.record, "w") as f:
        json.dump(
            {
                "fed": fed,
                "max_turns_per_step": turns,
                "process_count": jax.process_count(),
                "process_index": jax.process_index(),
                "history": summary["history"],
                "final_eval": summary["final_eval"],
            },
            f,
        )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main()
