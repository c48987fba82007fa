"""Multi-turn environments for tool-using policies (host-side Python on text).

`sandbox`: runs untrusted Python in an isolated, resource-limited process.
"""

from jaxrl_llm.envs.sandbox import (
    Sandbox,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
)

__all__ = ["Sandbox", "SandboxLimits", "SandboxResult", "SandboxUnavailable"]
