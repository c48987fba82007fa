"""Three RL steps over one global batch, each process feeding only its own prompts.

Run by `test_multiprocess.py` as two processes on localhost (4 CPU devices each, gloo
collectives), and called in-process (`run_steps`) by the test as the one-process
reference with the same global batch on 8 devices:

    python tests/parallel/mp_worker.py --process_id=I --num_processes=2 \
        --coordinator_address=127.0.0.1:PORT --out=DIR

Per step: this process reads the rows of the prompt batch its devices hold
(`multihost.local_rows`), builds the global prompt array
(`jax.make_array_from_process_local_data`), samples G completions per prompt on the
whole mesh, scores its own rows on the host, computes group advantages for its own
groups, assembles the global training batch and runs the jitted, sharded update.
Metrics are replicated, so every process reads the same numbers. At the end the state
is saved with orbax (every process writes its shards) into `<out>/ckpt`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

B, G, P, T, STEPS = 8, 2, 6, 5, 3
N = B * G
VOCAB = 64


def prompt_example(step: int, index: int) -> list[int]:
    """The `index`-th prompt of step `step`: a deterministic token list (a stand-in dataset)."""
    length = 2 + (7 * index + 3 * step) % (P - 1)
    return [3 + (11 * index + 5 * step + 13 * j) % (VOCAB - 3) for j in range(length)]


def reward_fn(prompt: list[int], completion, mask) -> float:
    """Verifier stand-in: fraction of valid completion tokens congruent to the prompt sum mod 4."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    hits = (np.asarray(completion) % 4 == sum(prompt) % 4) * np.asarray(mask)
    return float(hits.sum() / max(np.asarray(mask).sum(), 1))


def run_steps(workdir: str | None = None) -> dict:
    """The RL steps on a mesh over all devices of all processes; returns metrics and bookkeeping."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top

    from jaxrl_llm import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    from jaxrl_llm import models  # pylint: disable=g-import-not-at-top
    from jaxrl_llm import rollout as rollout_lib  # pylint: disable=g-import-not-at-top
    from jaxrl_llm.parallel import make_mesh  # pylint: disable=g-import-not-at-top
    from jaxrl_llm.parallel import multihost as mh  # pylint: disable=g-import-not-at-top
    from jaxrl_llm.parallel import sharding as S  # pylint: disable=g-import-not-at-top
    from jaxrl_llm.trainers import config as config_lib  # pylint: disable=g-import-not-at-top
    from jaxrl_llm.trainers import rl_step  # pylint: disable=g-import-not-at-top
    from jaxrl_llm.trainers.state import TrainState  # pylint: disable=g-import-not-at-top

    config = models.ModelConfig.tiny(vocab_size=VOCAB)
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 1})
    rep = S.replicated(mesh)
    rows_sh = S.row_sharding(mesh)
    S.check_batch_divides(B, mesh, what="prompts_per_step")

    p_shard = models.param_shardings(config, mesh)
    params = models.init_sharded_params(config, jax.random.key(0), mesh)
    optimizer = optax.adam(1e-3, eps=1e-6)
    o_shard = S.opt_state_shardings(optimizer, params, p_shard, mesh)
    state = TrainState(
        step=jax.device_put(np.zeros((), np.int32), rep),
        params=params,
        opt_state=jax.jit(optimizer.init, out_shardings=o_shard)(params),
        rng=jax.device_put(np.asarray(jax.random.key_data(jax.random.key(2))), rep),
        kl_coef=jax.device_put(np.asarray(0.0, np.float32), rep),
    )
    state_shard = jax.tree.map(lambda x: x.sharding, state)

    c = config_lib.base_config()
    c.unlock()
    c.rollout.max_new_tokens = T
    c.algo.entropy_coef = 0.01
    batch_shard = rl_step.TrainBatch(*([rows_sh] * 6))
    step_fn = jax.jit(
        functools.partial(
            rl_step.train_step,
            model_config=config,
            s=rl_step.LossSettings.from_config(c),
            num_micro=2,
            optimizer=optimizer,
            critic_optimizer=None,
            policy_warmup=0,
        ),
        in_shardings=(state_shard, batch_shard),
        out_shardings=(state_shard, rep),
        donate_argnums=(0,),
    )
    sq_norm = jax.jit(
        lambda p: sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p)), out_shardings=rep
    )
    sampling = rollout_lib.SamplingParams(max_new_tokens=T, temperature=1.0, n=G)

    loaded, history = [], []
    for step in range(STEPS):
        mine = mh.local_rows(rows_sh, B)  # this process's prompt indices
        examples = [prompt_example(step, i) for i in range(mine.start, mine.stop)]
        loaded.append(list(range(mine.start, mine.stop)))
        longest = mh.global_max(max(map(len, examples)))  # one prompt bucket on every process
        assert longest == max(len(prompt_example(step, i)) for i in range(B)), longest
        local = rollout_lib.pad_prompts(examples, bucket_lengths=(P,), pad_id=0)
        prompts = rollout_lib.PromptBatch(
            tokens=mh.make_global(np.asarray(local.tokens), rows_sh, B),
            mask=mh.make_global(np.asarray(local.mask), rows_sh, B),
        )
        key = jax.random.fold_in(jax.random.key(1), step)
        ro = rollout_lib.generate(state.params, config, prompts, key, sampling, mesh=mesh)

        lo, hi = mh.process_rows(ro.tokens.sharding, N, trailing=(T,))
        assert (lo, hi) == (mine.start * G, mine.stop * G), (lo, hi, mine)
        toks, mask = mh.host_local_rows(ro.tokens), mh.host_local_rows(ro.mask).astype(np.float32)
        rewards = np.asarray(
            [reward_fn(examples[r // G], toks[r], mask[r]) for r in range(hi - lo)], np.float32
        )
        adv = rewards - rewards.reshape(-1, G).mean(1).repeat(G)  # groups never straddle processes
        local_batch = rl_step.TrainBatch(
            prompt_tokens=mh.host_local_rows(ro.prompt_tokens),
            prompt_mask=mh.host_local_rows(ro.prompt_mask),
            tokens=toks,
            mask=mask,
            old_logp=mh.host_local_rows(ro.sampler_logp),
            advantages=adv[:, None] * mask,
        )
        batch = mh.make_global(local_batch, rows_sh, N)
        all_rewards = mh.gather_rows(rewards)
        np.testing.assert_array_equal(
            all_rewards, mh.gather_to_host(mh.make_global(rewards, rows_sh, N))
        )
        state, metrics = step_fn(state, batch)
        m = {k: float(v) for k, v in metrics.items()}
        m.update(
            {
                "reward": float(all_rewards.mean()),
                "param_sq": float(sq_norm(state.params)),
                "tokens_sum": int(mh.gather_to_host(ro.tokens).sum()),
            }
        )
        history.append(m)
        mh.log_main("step %d: loss %.5f reward %.3f", step, m["loss/total"], m["reward"])

    host_state = mh.gather_to_host(state)
    sums = {
        jax.tree_util.keystr(path): float(np.sum(np.asarray(x, np.float64)))
        for path, x in jax.tree_util.tree_flatten_with_path(host_state)[0]
    }
    if workdir is not None:
        ckpt = ckpt_lib.Checkpointer(workdir)
        ckpt.save(STEPS, state, {"note": "multiprocess"})
        ckpt.close()
    return {
        "history": history,
        "loaded": loaded,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
        "state": state,
        "final_sums": sums,
    }


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--coordinator_address", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update("jax_default_matmul_precision", "highest")
    from jaxrl_llm.parallel import multihost as mh  # pylint: disable=g-import-not-at-top

    mh.initialize(
        args.coordinator_address,
        args.num_processes,
        args.process_id,
        cpu_collectives="gloo",
        initialization_timeout=60,
    )
    out = run_steps(os.path.join(args.out, "ckpt"))
    out.pop("state")
    with open(os.path.join(args.out, f"process_{args.process_id}.json"), "w") as f:
        json.dump(out, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main()
