"""Load and save Hugging Face checkpoints (Llama / Qwen2 / Qwen3) as `params` pytrees.

    config, params = load_hf(path, mesh=mesh, rules=rules, dtype="bfloat16")
    save_hf(path, config, params)   # transformers.AutoModelForCausalLM.from_pretrained(path) loads it

Name mapping (per layer i, stacked into the scanned `layers` axis; torch
`Linear` weights are `[out, in]` and are transposed):

| HF tensor                                   | params path                        | transform            |
|---------------------------------------------|------------------------------------|----------------------|
| model.embed_tokens.weight [V, H]            | embed/embedding                    | —                    |
| model.layers.i.input_layernorm.weight       | layers/attn_norm/scale [L, H]      | stack                |
| model.layers.i.self_attn.q_proj.weight      | layers/attn/q_proj/kernel [L,H,nh,d] | W.T reshaped       |
| model.layers.i.self_attn.{k,v}_proj.weight  | layers/attn/{k,v}_proj/kernel [L,H,nkv,d] | W.T reshaped  |
| model.layers.i.self_attn.{q,k,v}_proj.bias  | .../bias [L, heads, d] (Qwen2)     | reshape              |
| model.layers.i.self_attn.o_proj.weight      | layers/attn/o_proj/kernel [L,nh,d,H] | W.T reshaped       |
| model.layers.i.self_attn.{q,k}_norm.weight  | layers/attn/{q,k}_norm/scale [L, d] (Qwen3) | stack       |
| model.layers.i.post_attention_layernorm.weight | layers/mlp_norm/scale [L, H]    | stack                |
| model.layers.i.mlp.{gate,up}_proj.weight    | layers/mlp/{gate,up}_proj/kernel [L,H,I] | W.T            |
| model.layers.i.mlp.down_proj.weight         | layers/mlp/down_proj/kernel [L,I,H] | W.T                 |
| model.norm.weight                           | final_norm/scale                   | —                    |
| lm_head.weight [V, H] (untied only)         | lm_head/kernel [H, V]              | W.T                  |

With a `mesh`, every parameter is created with `jax.make_array_from_callback`
in its target `NamedSharding` (from `logical_axes(config)` and the rules): each
device receives only its shard, read from memory-mapped safetensors; no
replicated copy of the model is ever placed on a device. Safetensors files are
read and written by a small built-in codec (format: u64 header size, JSON
header, raw little-endian data), so bfloat16 needs no torch.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxrl_llm.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from jaxrl_llm.models.transformer import logical_axes
from jaxrl_llm.parallel.axes import logical_to_sharding

__all__ = ["load_hf", "save_hf", "hf_tensor_specs", "read_safetensors_header", "read_tensor"]

_ST_DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
# Tensors some checkpoints carry that the model does not use.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ------------------------------------------------------------ safetensors codec
def read_safetensors_header(path: str) -> tuple[dict, int]:
    """`(header dict, data offset)` of a .safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header, 8 + n


class _SafetensorsFolder:
    """Lazy, memory-mapped access to the tensors of an HF checkpoint folder."""

    def __init__(self, path: str):
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        elif os.path.exists(single):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"no model.safetensors or model.safetensors.index.json in {path}"
            )
        self.entries: dict[str, tuple[str, dict, int]] = {}
        for name in files:
            file = os.path.join(path, name)
            header, offset = read_safetensors_header(file)
            for key, info in header.items():
                if key != "__metadata__":
                    self.entries[key] = (file, info, offset)
        self._maps: dict[str, np.memmap] = {}

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name][1]["shape"])

    def get(self, name: str) -> np.ndarray:
        file, info, offset = self.entries[name]
        if file not in self._maps:
            self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        dtype = _ST_DTYPES[info["dtype"]]
        raw = self._maps[file][offset + begin : offset + end]
        return raw.view(dtype).reshape(info["shape"])


def _write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        data = array.tobytes()
        header[name] = {
            "dtype": _ST_NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


# ---------------------------------------------------------------- name mapping
def hf_tensor_specs(
    config: ModelConfig,
) -> dict[tuple[str, ...], tuple[str, Callable, Callable, tuple]]:
    """params path → (HF name, with `{i}` for the layer, to_params(W), to_hf(w), HF shape of one tensor).

    `to_params` maps one HF tensor to our layout (one layer), `to_hf` back.
    """
    h, nh, nkv, d = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    m, v = config.intermediate_size, config.vocab_size

    def linear_in(out_shape):  # torch [prod(out), in] -> [in, *out]
        return (
            lambda w: w.T.reshape((w.shape[1],) + out_shape),
            lambda k: k.reshape(k.shape[0], -1).T,
        )

    def linear_out(in_shape):  # torch [out, prod(in)] -> [*in, out]
        return (
            lambda w: w.T.reshape(in_shape + (w.shape[0],)),
            lambda k: k.reshape(-1, k.shape[-1]).T,
        )

    same = (lambda w: w, lambda w: w)
    attn = "model.layers.{i}.self_attn."
    specs = {
        ("embed", "embedding"): ("model.embed_tokens.weight", *same, (v, h)),
        ("final_norm", "scale"): ("model.norm.weight", *same, (h,)),
        ("layers", "attn_norm", "scale"): ("model.layers.{i}.input_layernorm.weight", *same, (h,)),
        ("layers", "mlp_norm", "scale"): (
            "model.layers.{i}.post_attention_layernorm.weight",
            *same,
            (h,),
        ),
        ("layers", "attn", "q_proj", "kernel"): (
            attn + "q_proj.weight",
            *linear_in((nh, d)),
            (nh * d, h),
        ),
        ("layers", "attn", "k_proj", "kernel"): (
            attn + "k_proj.weight",
            *linear_in((nkv, d)),
            (nkv * d, h),
        ),
        ("layers", "attn", "v_proj", "kernel"): (
            attn + "v_proj.weight",
            *linear_in((nkv, d)),
            (nkv * d, h),
        ),
        ("layers", "attn", "o_proj", "kernel"): (
            attn + "o_proj.weight",
            *linear_out((nh, d)),
            (h, nh * d),
        ),
        ("layers", "mlp", "gate_proj", "kernel"): (
            "model.layers.{i}.mlp.gate_proj.weight",
            *linear_in((m,)),
            (m, h),
        ),
        ("layers", "mlp", "up_proj", "kernel"): (
            "model.layers.{i}.mlp.up_proj.weight",
            *linear_in((m,)),
            (m, h),
        ),
        ("layers", "mlp", "down_proj", "kernel"): (
            "model.layers.{i}.mlp.down_proj.weight",
            lambda w: w.T,
            lambda k: k.T,
            (h, m),
        ),
    }
    if config.qkv_bias:
        for name, heads in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)):
            specs[("layers", "attn", name, "bias")] = (
                attn + name + ".bias",
                (lambda w, heads=heads: w.reshape(heads, d)),
                lambda b: b.reshape(-1),
                (heads * d,),
            )
    if config.qk_norm:
        specs[("layers", "attn", "q_norm", "scale")] = (attn + "q_norm.weight", *same, (d,))
        specs[("layers", "attn", "k_norm", "scale")] = (attn + "k_norm.weight", *same, (d,))
    if not config.tie_embeddings:
        specs[("lm_head", "kernel")] = ("lm_head.weight", lambda w: w.T, lambda k: k.T, (v, h))
    return specs


def _names_for(config: ModelConfig, hf_name: str) -> list[str]:
    if "{i}" in hf_name:
        return [hf_name.format(i=i) for i in range(config.num_layers)]
    return [hf_name]


def _get_path(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set_path(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ---------------------------------------------------------------------- load
def read_tensor(path: str | os.PathLike, name: str) -> np.ndarray:
    """One tensor of an HF folder (single or index-sharded safetensors) as a numpy array."""
    folder = _SafetensorsFolder(os.fspath(path))
    if name not in folder.entries:
        raise ValueError(f"{os.fspath(path)!r} holds no tensor {name!r}")
    return folder.get(name)


def _check_tensors(config: ModelConfig, folder: _SafetensorsFolder, specs, extra=()) -> None:
    expected = {}
    for hf_name, *_rest in specs.values():
        for name in _names_for(config, hf_name):
            expected[name] = _rest[-1]
    present = set(folder.entries)
    missing = sorted(set(expected) - present)
    ignorable = ({"lm_head.weight"} if config.tie_embeddings else set()) | set(extra)
    unexpected = sorted(
        n
        for n in present - set(expected)
        if n not in ignorable and not n.endswith(_IGNORED_SUFFIXES)
    )
    if missing:
        raise ValueError(f"checkpoint lacks tensors {missing}")
    if unexpected:
        raise ValueError(f"checkpoint has unexpected tensors {unexpected}")
    for name, shape in expected.items():
        got = folder.shape(name)
        if tuple(got) != tuple(shape):
            raise ValueError(
                f"tensor {name} has shape {tuple(got)} in the checkpoint; the config "
                f"expects {tuple(shape)}"
            )


def load_hf(
    path: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
    dtype: str | None = None,
    hf_config: dict | None = None,
    extra_tensors: tuple[str, ...] = (),
) -> tuple[ModelConfig, dict]:
    """Read an HF folder (config.json + safetensors, single or index-sharded) into `(config, params)`.

    `hf_config`: the config dict to use instead of the folder's `config.json` (a caller that
    reads another head's checkpoint as its backbone adapts it); `extra_tensors`: names in the
    folder that are not the decoder's and are left alone (e.g. a classifier's `score.weight`).

    `dtype`: parameter (and compute) dtype; default the checkpoint's
    `dtype`/`torch_dtype` when it is float32/bfloat16/float16, else float32.
    With `mesh`, params are created directly in their `NamedSharding`
    (rules default to `parallel.axes.DEFAULT_RULES`); without, on the default device.
    Raises ValueError naming the unsupported architecture, the missing or
    unexpected tensors, or the tensor whose shape does not match.
    """
    path = os.fspath(path)
    if hf_config is None:
        with open(os.path.join(path, "config.json")) as f:
            hf_config = json.load(f)
    if dtype is None:
        dtype = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"
        dtype = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
    config = ModelConfig.from_hf(hf_config, dtype=dtype, param_dtype=dtype)
    folder = _SafetensorsFolder(path)
    specs = hf_tensor_specs(config)
    _check_tensors(config, folder, specs, extra_tensors)

    target = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    full_shapes = _param_shapes(config, specs)
    shardings = None
    if mesh is not None:
        shapes: dict = {}
        for ppath, shape in full_shapes.items():
            _set_path(shapes, ppath, jax.ShapeDtypeStruct(shape, target))
        shardings = logical_to_sharding(logical_axes(config), mesh, rules, shapes=shapes)

    params: dict = {}
    for ppath, (hf_name, to_params, _to_hf, _shape) in specs.items():
        hf_names = _names_for(config, hf_name)
        stacked = "{i}" in hf_name
        memo: dict = {}

        def host(index=(), hf_names=hf_names, to_params=to_params, stacked=stacked, memo=memo):
            """The (sub)array at `index` of the final parameter, read from disk once per parameter."""
            if "full" not in memo:
                if stacked:
                    memo["full"] = np.stack([to_params(folder.get(n)) for n in hf_names])
                else:
                    memo["full"] = to_params(folder.get(hf_names[0]))
            return np.asarray(memo["full"][tuple(index)], target)

        shape = full_shapes[ppath]
        if shardings is None:
            value = jnp.asarray(host())
        else:
            value = jax.make_array_from_callback(shape, _get_path(shardings, ppath), host)
        memo.clear()  # host copy of this parameter no longer needed
        _set_path(params, ppath, value)
    return config, params


def _param_shapes(config: ModelConfig, specs) -> dict:
    """params path → full parameter shape (our layout)."""
    out = {}
    for ppath, (hf_name, to_params, _to_hf, hf_shape) in specs.items():
        one = to_params(np.empty(hf_shape, np.float32)).shape
        out[ppath] = ((config.num_layers,) + one) if "{i}" in hf_name else one
    return out


# ---------------------------------------------------------------------- save
def save_hf(path: str | os.PathLike, config: ModelConfig, params: dict) -> None:
    """Write `config.json` and `model.safetensors` that transformers loads.

    Tensors are written in the params' dtype (`config.param_dtype` names it in
    config.json). Arrays are gathered to the host (single-host use).
    """
    if config.architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"architecture {config.architecture!r}; supported: {SUPPORTED_ARCHITECTURES}"
        )
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = {}
    dtypes = set()
    for ppath, (hf_name, _to_params, to_hf, hf_shape) in hf_tensor_specs(config).items():
        try:
            value = np.asarray(jax.device_get(_get_path(params, ppath)))
        except KeyError:
            raise ValueError(f"params lack {'/'.join(ppath)} (needed for {hf_name})") from None
        dtypes.add(value.dtype)
        for i, name in enumerate(_names_for(config, hf_name)):
            tensor = to_hf(value[i] if "{i}" in hf_name else value)
            if tuple(tensor.shape) != tuple(hf_shape):
                raise ValueError(
                    f"params {'/'.join(ppath)} give {name} shape {tensor.shape}, "
                    f"expected {hf_shape}"
                )
            tensors[name] = np.ascontiguousarray(tensor)
    hf = config.to_hf_dict()
    if len(dtypes) == 1:
        only = dtypes.pop()
        name = "bfloat16" if only == np.dtype(ml_dtypes.bfloat16) else only.name
        hf["torch_dtype"] = hf["dtype"] = name
    # Weights first, each file through a temporary name: a save killed midway never leaves a
    # folder whose config.json announces weights that are not all there.
    weights = os.path.join(path, "model.safetensors")
    _write_safetensors(weights + ".tmp", tensors)
    os.replace(weights + ".tmp", weights)
    with open(os.path.join(path, "config.json.tmp"), "w") as f:
        json.dump(hf, f, indent=2)
    os.replace(os.path.join(path, "config.json.tmp"), os.path.join(path, "config.json"))
