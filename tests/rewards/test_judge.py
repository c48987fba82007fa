"""LLM-as-judge rewards: verdict parsing (robust, malformed counted), the judge's verdicts equal
the library sampler's greedy decoding of the filled template, caching per pair."""

import jax
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm import rollout as rollout_lib
from jaxrl_llm.rewards import judge as judge_lib


@pytest.mark.parametrize(
    "text, mode, want",
    [
        (" yes", "yes_no", 1.0),
        ("Yes, it is.", "yes_no", 1.0),
        ("NO", "yes_no", 0.0),
        ("The answer is incorrect", "yes_no", 0.0),
        ("correct!", "yes_no", 1.0),
        ("  maybe", "yes_no", None),
        ("", "yes_no", None),
        ("yesterday no", "yes_no", 0.0),  # words, not prefixes
        ("Score: 7/10", "score", 0.7),
        ("8", "score", 0.8),
        ("3 / 4", "score", 0.75),
        ("12/10", "score", 1.0),
        ("-2", "score", 0.0),
        ("score: 5/0", "score", None),
        ("no number", "score", None),
    ],
)
def test_parse_verdict(text, mode, want):
    got = judge_lib.parse_verdict(text, mode)
    assert got == (None if want is None else pytest.approx(want)), (text, got)


def test_unknown_verdict_mode():
    with pytest.raises(ValueError, match="verdict mode 'stars'"):
        judge_lib.parse_verdict("yes", "stars")


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    """A random tiny causal LM with the builtin tokenizer, saved as an HF folder."""
    root = tmp_path_factory.mktemp("judge")
    path = str(root / "judge")
    tokenizer = models.load_tokenizer(models.build_builtin_tokenizer(path))
    config = models.ModelConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        qkv_bias=True,
        architecture="qwen2",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    models.save_hf(path, config, models.init_params(config, jax.random.key(0)))
    return path


class ScriptedJudge(judge_lib.JudgeReward):
    """A judge whose verdict is given per completion (counts how many pairs it judged)."""

    def __init__(self, path, script, **kw):
        super().__init__(path, **kw)
        self.script, self.calls = script, []

    def verdicts(self, prompts, completions):
        self.calls.append(len(prompts))
        return [self.script[c] for c in completions]


def test_judge_verdicts_are_the_samplers_greedy_decoding(judge_folder):
    judge = judge_lib.JudgeReward(judge_folder, max_new_tokens=5, batch_size=4)
    prompts = ["1+2=", "3+4=", "10+20=", "5+5=", "7+8="]
    completions = ["3", "8", "30", "10", "15"]
    texts = judge.verdicts(prompts, completions)
    # the same thing by hand: fill the template, encode with BOS, greedy-decode one by one
    tok = models.load_tokenizer(judge_folder)
    config, params = models.load_hf(judge_folder)
    for p, c, text in zip(prompts, completions, texts):
        ids = [tok.bos_token_id] + list(
            tok.encode(judge.template.format(prompt=p, completion=c), add_special_tokens=False)
        )
        batch = rollout_lib.pad_prompts([ids], bucket_lengths=judge.buckets, pad_id=0)
        ro = rollout_lib.generate(params, config, batch, jax.random.key(1), judge.sampling)
        assert rollout_lib.decode_completions(tok, ro)[0] == text
    rewards, info = judge.score(prompts, completions)
    want = [judge_lib.parse_verdict(t) for t in texts]
    assert info["malformed"] == sum(w is None for w in want)
    np.testing.assert_array_equal(rewards, [0.0 if w is None else w for w in want])


def test_malformed_verdicts_are_scored_as_configured_and_counted(judge_folder):
    script = {"a": "yes", "b": "no", "c": "I cannot tell", "d": "Correct."}
    judge = ScriptedJudge(judge_folder, script, malformed_reward=-1.0)
    rewards, info = judge.score(["p"] * 4, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(rewards, [1.0, 0.0, -1.0, 1.0])
    assert info == {"malformed": 1, "cache_hits": 0, "judged": 4}


def test_verdicts_are_cached_per_pair(judge_folder):
    script = {"a": "yes", "b": "gibberish"}
    judge = ScriptedJudge(judge_folder, script, cache_size=8)
    rewards, info = judge.score(["p", "p", "q"], ["a", "a", "b"])  # one duplicate pair
    np.testing.assert_array_equal(rewards, [1.0, 1.0, 0.0])
    assert judge.calls == [2] and info == {"malformed": 1, "cache_hits": 0, "judged": 2}
    rewards, info = judge.score(["q", "p"], ["b", "a"])
    np.testing.assert_array_equal(rewards, [0.0, 1.0])
    assert judge.calls == [2] and info == {"malformed": 1, "cache_hits": 2, "judged": 0}
    # the cache is bounded: with room for one pair the older one is judged again
    small = ScriptedJudge(judge_folder, script, cache_size=1)
    small.score(["p"], ["a"])
    small.score(["q"], ["b"])
    small.score(["p"], ["a"])
    assert small.calls == [1, 1, 1]


def test_bad_judge_arguments(judge_folder):
    with pytest.raises(ValueError, match="must contain"):
        judge_lib.JudgeReward(judge_folder, template="Rate: {completion}")
    with pytest.raises(ValueError, match="judge verdict 'stars'"):
        judge_lib.JudgeReward(judge_folder, verdict="stars")
    judge = judge_lib.JudgeReward(judge_folder, prompt_buckets=(16,))
    with pytest.raises(ValueError, match="more than the largest bucket 16"):
        judge.score(["a long prompt " * 4], ["x"])


def test_the_trainer_combines_the_judge_with_the_task_reward(judge_folder):
    """`Trainer.with_reward_terms`: weighted sum of the task's reward and the judge's verdicts,
    each logged as a component, malformed verdicts counted, `correct` untouched."""
    import types

    from jaxrl_llm.trainers import rl, stages
    from tests.trainers.conftest import small_config

    c = small_config(**{"judge.path": judge_folder, "judge.weight": 2.0})
    c.reward_terms.task_weight = 0.5
    script = {"a": "yes", "b": "no", "c": "??"}
    stub = types.SimpleNamespace(
        config=c, learned_reward=None, judge=ScriptedJudge(judge_folder, script)
    )
    task = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    info = {"components": {"correct": task.copy()}}
    total = rl.Trainer.with_reward_terms(stub, None, ["p"] * 4, ["a", "b", "c", "a"], task, info, 2)
    np.testing.assert_allclose(total, 0.5 * task + 2.0 * np.array([1.0, 0.0, 0.0, 1.0]))
    np.testing.assert_array_equal(info["components"]["judge"], [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(info["components"]["task"], task)
    np.testing.assert_array_equal(stages.correct_from(total, info), task)
    counters = stages.fresh_counters()
    stages.count_reward_failures(counters, dict(info, num_rows=4))
    assert counters["judge_malformed"] == 1
    # without learned terms the reward is returned as it is
    stub.judge = None
    assert rl.Trainer.with_reward_terms(stub, None, [], [], task, {}, 2) is task
