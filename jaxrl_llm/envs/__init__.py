"""Multi-turn environments for tool-using policies (host-side Python on text).

`base`: the contract (`Env`, `StepResult`), the `ToolEnv` base class and the factory
(`make_env`, `EnvSpec`); `tools`: tool-call parsing (`ToolCallParser`, default `TagParser`);
`sandbox`: runs untrusted Python in an isolated, resource-limited process. Shipped
environments: `calculator`, `guess_number`, `python_tool`, `retrieval` (built by name with
`make_env`, imported on first use). The multi-turn sampler that drives them is not built yet
(see docs/envs.md).
"""

from jaxrl_llm.envs.base import (
    AnswerOutcome,
    Env,
    EnvSpec,
    StepResult,
    ToolEnv,
    ToolError,
    approx_token_count,
    make_env,
    register_env,
    registered_envs,
    truncate_to_tokens,
)
from jaxrl_llm.envs.sandbox import (
    Sandbox,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
)
from jaxrl_llm.envs.tools import ParsedAction, TagParser, ToolCallParser

__all__ = [
    "AnswerOutcome",
    "Env",
    "EnvSpec",
    "ParsedAction",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "StepResult",
    "TagParser",
    "ToolCallParser",
    "ToolEnv",
    "ToolError",
    "approx_token_count",
    "make_env",
    "register_env",
    "registered_envs",
    "truncate_to_tokens",
]
