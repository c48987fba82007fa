"""Fused attention against the XLA path on a GPU: cuDNN (unpacked rows) and the Pallas Triton
kernel (packed rows), forward and gradients asserted, fused-vs-XLA times recorded.

    python benchmarks/attention_parity.py                 # on a GPU (benchmarks/gpu.sh runs it)
    python benchmarks/attention_parity.py --cpu_smoke     # the same checks on CPU, tiny shapes:
                                                          # cuDNN's layout through XLA, Pallas
                                                          # in interpret mode

Inputs: Qwen2.5-0.5B attention shapes (14 query heads over 2 KV heads, head_dim 64), rows
left-padded (prompts), right-padded (completions), padded on both sides, and packed (segment
ids). q / k / v are bf16 (cuDNN has no fp32), and so is the XLA path compared with them; both
are measured against a float32 evaluation of the XLA path (`transformer.attention_mask`
masks). Asserted on valid positions: a kernel's max error, for the outputs and for the
gradients of `sum(valid outputs * w)` w.r.t. q, k, v, is at most
`max(2 * XLA-bf16's own error, 2e-2)`. Then a tiny bf16 model's logits and parameter
gradients with `attention="cudnn"` / `"pallas_gpu"` (packed): their largest relative error
against the float32 model is at most `max(2 * the bf16 XLA model's, 1e-2)`.
Timings (forward + backward of one attention call, median of 5 after a compile) are
recorded, not asserted. Prints one JSON object; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.models import attention_kernels as ak
from jaxrl_llm.models import transformer
from jaxrl_llm.models.config import ModelConfig

__all__ = ["main"]


def _rows(layout, n, s, rng):
    lengths = rng.integers(s // 4, s, size=n)
    idx = np.arange(s)[None, :]
    seg = None
    if layout == "left":
        mask = idx >= (s - lengths)[:, None]
    elif layout == "right":
        mask = idx < lengths[:, None]
    elif layout == "both":
        start = rng.integers(0, s - lengths)
        mask = (idx >= start[:, None]) & (idx < (start + lengths)[:, None])
    else:  # packed: segments of random lengths, the tail of each row padding
        seg = np.zeros((n, s), np.int32)
        for r in range(n):
            o, k = 0, 1
            while o < s - 8:
                ln = int(rng.integers(4, s // 3))
                seg[r, o : min(o + ln, s - 8)] = k
                o, k = o + ln, k + 1
        mask = seg > 0
    mask = jnp.asarray(mask.astype(np.int32))
    return mask, None if seg is None else jnp.asarray(seg)


def _xla(q, k, v, mask, seg):
    """The XLA path of `transformer.Attention` (scores materialised), in q's dtype."""
    allowed = transformer.attention_mask(mask, segment_ids=seg)
    g = q.shape[2] // k.shape[2]
    kk, vv = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, kk, preferred_element_type=jnp.float32)
    scores = jnp.where(allowed[:, None], scores * q.shape[-1] ** -0.5, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("nhqk,nkhd->nqhd", probs, vv)


def _value_and_grads(fn, mask, w):
    def loss(q, k, v):
        out = fn(q, k, v)
        valid = mask[:, :, None, None] > 0
        return jnp.sum(jnp.where(valid, out.astype(jnp.float32) * w, 0.0)), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _err(a, b, valid=None):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if valid is not None:
        a, b = a[valid], b[valid]
    return float(np.abs(a - b).max())


def _time(f, *args, reps=5):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def check_kernel(impl, layout, n, s, heads, kv_heads, d, interpret, seed=0):
    rng = np.random.default_rng(seed)
    mask, seg = _rows(layout, n, s, rng)
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (n, s, heads, d), jnp.bfloat16)
    k = jax.random.normal(keys[1], (n, s, kv_heads, d), jnp.bfloat16)
    v = jax.random.normal(keys[2], (n, s, kv_heads, d), jnp.bfloat16)
    w = jax.random.normal(keys[3], (n, s, heads, d), jnp.float32)
    layout_ = ak.make_layout(impl, mask, seg, interpret=interpret)
    fused = _value_and_grads(lambda q, k, v: ak.attend(q, k, v, layout_), mask, w)
    xla = _value_and_grads(lambda q, k, v: _xla(q, k, v, mask, seg), mask, w)
    f32 = _value_and_grads(
        lambda q, k, v: _xla(*(x.astype(jnp.float32) for x in (q, k, v)), mask, seg), mask, w
    )
    (_, out), grads = fused(q, k, v)
    (_, out_x), grads_x = xla(q, k, v)
    (_, out_r), grads_r = f32(q, k, v)
    valid = np.asarray(mask) > 0
    res = {"impl": impl, "layout": layout, "shape": [n, s, heads, kv_heads, d]}
    res["out_err"], res["out_err_xla"] = _err(out, out_r, valid), _err(out_x, out_r, valid)
    res["grad_err"] = max(_err(a, b) for a, b in zip(grads, grads_r))
    res["grad_err_xla"] = max(_err(a, b) for a, b in zip(grads_x, grads_r))
    res["ok"] = bool(
        res["out_err"] <= max(2 * res["out_err_xla"], 2e-2)
        and res["grad_err"] <= max(2 * res["grad_err_xla"], 2e-2)
        and np.isfinite(np.asarray(out, np.float32)).all()
    )
    if not interpret:
        res["fwd_bwd_s"], res["fwd_bwd_s_xla"] = _time(fused, q, k, v), _time(xla, q, k, v)
    return res


def _rel(tree, ref):
    """Largest per-leaf `max |a - b| / max |b|` (parameter gradients differ in scale)."""
    errs = []
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        errs.append(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)))
    return max(errs)


def check_model(attention, layout, interpret):
    """A tiny bf16 model with `attention=` vs `attention="xla"`, both against float32."""
    config = ModelConfig.tiny(dtype="bfloat16")
    params = transformer.init_params(config, jax.random.key(0))
    n, s = 2, 64
    mask, seg = _rows(layout, n, s, np.random.default_rng(1))
    positions = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0)
    if seg is not None:
        positions = jnp.zeros_like(mask)  # the values do not matter for the comparison
    tokens = jax.random.randint(jax.random.key(2), (n, s), 0, config.vocab_size)
    w = jax.random.normal(jax.random.key(3), (n, s, config.vocab_size))
    valid = np.asarray(mask) > 0

    def run(cfg):
        def loss(p):
            logits, _ = transformer.apply(cfg, p, tokens, positions, mask, segment_ids=seg)
            return jnp.sum(jnp.where(mask[:, :, None] > 0, logits * w, 0.0)), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return np.asarray(logits)[valid], grads

    ref = run(config.replace(dtype="float32"))
    xla = run(config)
    got = run(config.replace(attention=attention, attention_interpret=interpret))
    res = {"model": attention, "layout": layout}
    res["logits_rel"], res["logits_rel_xla"] = _rel(got[0], ref[0]), _rel(xla[0], ref[0])
    res["grad_rel"], res["grad_rel_xla"] = _rel(got[1], ref[1]), _rel(xla[1], ref[1])
    res["ok"] = bool(
        res["logits_rel"] <= max(2 * res["logits_rel_xla"], 1e-2)
        and res["grad_rel"] <= max(2 * res["grad_rel_xla"], 1e-2)
    )
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu_smoke", action="store_true", help="tiny shapes, interpret mode")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    args = p.parse_args(argv)
    interpret = args.cpu_smoke
    if interpret:
        n, s, heads, kv_heads, d = 2, 32, 4, 2, 16
    else:
        n, s, heads, kv_heads, d = args.rows, args.seq, 14, 2, 64
    results = []
    cases = [("cudnn", lay) for lay in ("left", "right", "both")]
    cases += [("pallas_gpu", lay) for lay in ("left", "packed")]
    for impl, layout in cases:
        try:
            results.append(check_kernel(impl, layout, n, s, heads, kv_heads, d, interpret))
        except Exception as e:  # a kernel that does not run is a failed check, reported
            results.append({"impl": impl, "layout": layout, "ok": False, "error": repr(e)[:300]})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    for attention, layout in (("cudnn", "both"), ("pallas_gpu", "packed")):
        try:
            results.append(check_model(attention, layout, interpret))
        except Exception as e:
            results.append({"model": attention, "ok": False, "error": repr(e)[:300]})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    ok = all(r["ok"] for r in results)
    print(json.dumps({"device": str(jax.devices()[0]), "ok": ok, "results": results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
