"""Install jaxrl_llm: `pip install -e .[dev]` (CPU), `pip install -e . "jax[cuda12]"` (GPU), `pip install -e . "jax[tpu]"` (TPU)."""

import setuptools

setuptools.setup(
    name="jaxrl_llm",
    version="0.1.0",
    description="JAX-first reinforcement-learning fine-tuning of language models.",
    packages=setuptools.find_packages(include=["jaxrl_llm", "jaxrl_llm.*"]),
    python_requires=">=3.10",
    install_requires=[
        # Upper bounds: the newest minor versions the code is known to run on (CI: jax
        # 0.10.2, flax 0.12.8; a GPU machine: jax 0.11.2). Raise them after a green run.
        "jax>=0.6.0,<0.13",
        "flax>=0.10.0,<0.13",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "transformers>=4.50",
        "tokenizers>=0.21",
        "datasets>=3.0",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "tensorboardX>=2.6",
        "tensorboard>=2.15",  # the viewer the trainer's last line points to
        "chex>=0.1.88",
        "safetensors>=0.4.5",
        "numpy>=1.26",
        "tqdm>=4.66",
        "math-verify>=0.7",
        "matplotlib>=3.8",
        "qwix>=0.1.8,<0.2",  # QLoRA: the quantised frozen base (jaxrl_llm/models/quant.py)
    ],
    extras_require={
        "dev": [
            "pytest>=8.0",
            "pytest-timeout>=2.3",
            "torch==2.13.0",
            "peft==0.21.2",  # LoRA parity test: our PEFT-layout adapters load in PEFT
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "scipy>=1.12",
            "ruff==0.17.5",
        ],
        # Accelerators (not installed by default): pip install -e . "jax[cuda12]" / "jax[tpu]".
        "cuda12": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["jaxrl-llm=jaxrl_llm.main:run"]},
)
