"""Collate a grid: scalars from each cell's metrics.jsonl -> tables with IQM and CIs, plots, fits.

    python experiments/collate.py --root runs/nsr_grid [--out runs/nsr_grid/results] \\
        [--reduce final|best|last:K] [--curves train/reward,train/entropy] [--fit-tag eval/accuracy]

Cells are the sub-directories of `--root` holding `metrics.jsonl` (one JSON line per logged
step, written by `metrics.MetricWriter` beside the TensorBoard event files) or, for workdirs
from before that file, event files (`events.out.tfevents.*`) only; and, from
`experiments/grid.py`, a `cell.json` with their overrides. Cells whose
overrides differ only in the seed key form one variant. Per variant and scalar
tag, each seed's run is reduced to one number (its final value by default) and
the seeds are summarised by the IQM with a 95 % percentile-bootstrap interval
and by mean and std (Agarwal et al. 2021).

Outputs in `--out` (default `<root>/results`):
  summary.csv   variant, metric, num_seeds, iqm, ci_low, ci_high, mean, std, values, <override columns>
  summary.md    Markdown tables: headline metrics (`--metrics`), pass@k, sigmoid and entropy fits
  passk.csv     variant, k, num_seeds, iqm, ci_low, ci_high
                (pass@k per seed from `<cell>/eval.json` if present, else the reduced
                `eval/pass_at_k` scalar)
  fits.csv      per variant: ScaleRL sigmoid fit of the seed-mean curve of `--fit-tag`
                against the step (asymptote, midpoint, exponent, r0, r2)
  entropy_fit.csv  per variant: R = -a exp(H) + b (Cui et al. 2025) between the seed-mean
                curves of `--entropy-tag` (H) and `--fit-tag` (R) at common steps
  curve_<tag>.png   seed-mean learning curve with a 95 % bootstrap band per variant
  pass_at_k.png     IQM pass@k against k per variant, with CI bars

Metric names are read in today's spelling and in the older one (`eval/pass@4`, stored by
tensorboardX as `eval/pass_4`, and `pass@4` in eval.json) alike: both become `eval/pass_at_4`
(`passk.canonical_metric_name`; docs/metrics.md), so grids run before the rename stay
readable and the tables use the new names.

Old workdirs: event files are read with the protobuf classes that ship with tensorboardX (no
TensorFlow or TensorBoard needed, and no reservoir down-sampling). A workdir whose run began
before metrics.jsonl existed and was resumed after has both; its event files are then read as
well, and metrics.jsonl wins where both hold a step. When a run was resumed, for a step logged
twice the value written last wins.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import os
import re
import struct
import sys
from collections.abc import Sequence

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrl_llm import stats  # noqa: E402
from jaxrl_llm import workdir as workdir_lib  # noqa: E402
from jaxrl_llm.metrics import jsonl_events_files, read_scalars_jsonl  # noqa: E402
from jaxrl_llm.passk import canonical_metric_name, fit_entropy_performance  # noqa: E402

__all__ = [
    "read_event_scalars",
    "read_cell_scalars",
    "canonical_tag",
    "CellRun",
    "load_cells",
    "reduce_series",
    "summarize",
    "pass_at_k_table",
    "fit_table",
    "entropy_fit_table",
    "collate",
    "main",
]

_PASS_AT = re.compile(r"pass_at_(\d+)")


# ----------------------------------------------------------------------------- event files


def canonical_tag(tag: str) -> str:
    """Today's name of a tag: 'eval/pass_4' (tensorboardX's rewrite of the old 'eval/pass@4')
    and 'eval/pass@4' -> 'eval/pass_at_4'; other tags unchanged."""
    return canonical_metric_name(tag)


def _records(path: str):
    """Payloads of a TFRecord file: [u64 length][u32 crc][data][u32 crc]; a torn tail is ignored."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data


def read_event_scalars(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scalars of the event files directly in `workdir`: {tag: (steps int64 [S], values float64 [S])}.

    Steps are sorted and unique; a step written more than once keeps the value
    written last (files ordered by their first event's wall time).
    """
    from tensorboardX.proto import event_pb2

    files = []
    for path in glob.glob(os.path.join(workdir, workdir_lib.EVENTS_GLOB)):
        events = [event_pb2.Event.FromString(r) for r in _records(path)]
        if events:
            files.append((events[0].wall_time, path, events))
    files.sort(key=lambda t: (t[0], t[1]))
    series: dict[str, dict[int, float]] = {}
    for _, _, events in files:
        for ev in events:
            if not ev.HasField("summary"):
                continue
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    value = float(v.simple_value)
                elif v.HasField("tensor") and (v.tensor.float_val or v.tensor.double_val):
                    value = float((list(v.tensor.float_val) or list(v.tensor.double_val))[0])
                else:
                    continue
                series.setdefault(canonical_tag(v.tag), {})[int(ev.step)] = value
    out = {}
    for tag, points in series.items():
        steps = np.array(sorted(points), np.int64)
        out[tag] = (steps, np.array([points[s] for s in steps], np.float64))
    return out


def read_cell_scalars(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A workdir's scalars, {tag: (steps, values)}, tags in today's names.

    From `metrics.jsonl` when the workdir has it; from the event files when it has not (a
    workdir from before the JSONL file). A run that began before the JSONL file and was resumed
    after has event files that the JSONL file's header lines do not name: those are read too
    and merged (the JSONL value wins at a step both hold).
    """
    jsonl = read_scalars_jsonl(workdir)
    if jsonl is None:
        return read_event_scalars(workdir)
    jsonl = _renamed(jsonl)
    paired = jsonl_events_files(workdir) or set()
    older = [
        p
        for p in glob.glob(os.path.join(workdir, workdir_lib.EVENTS_GLOB))
        if os.path.basename(p) not in paired
    ]
    if not older:
        return jsonl
    merged = {
        tag: dict(zip(s.tolist(), v.tolist()))
        for tag, (s, v) in read_event_scalars(workdir).items()
    }
    for tag, (steps, values) in jsonl.items():
        merged.setdefault(tag, {}).update(zip(steps.tolist(), values.tolist()))
    out = {}
    for tag, points in merged.items():
        steps = np.array(sorted(points), np.int64)
        out[tag] = (steps, np.array([points[x] for x in steps], np.float64))
    return out


def _renamed(scalars: dict) -> dict:
    """Tags in today's names; when an old and a new name both occur, the new one's series wins."""
    out = {}
    for tag in sorted(scalars, key=lambda t: canonical_tag(t) == t):  # old names first
        out[canonical_tag(tag)] = scalars[tag]
    return out


# ----------------------------------------------------------------------------- cells


@dataclasses.dataclass
class CellRun:
    """One workdir: its overrides, its variant (overrides without the seed) and its scalars."""

    name: str
    workdir: str
    index: int
    overrides: dict
    seed_key: str
    scalars: dict
    eval: dict | None
    done: bool

    @property
    def variant_overrides(self) -> dict:
        return {k: v for k, v in self.overrides.items() if k != self.seed_key}

    @property
    def variant(self) -> str:
        o = self.variant_overrides
        if not o:
            return "default"
        last = [k.rsplit(".", 1)[-1] for k in o]
        return ",".join(
            f"{s if last.count(s) == 1 else k}={v}" for (k, v), s in zip(o.items(), last)
        )


def load_cells(root: str, seed_key: str = "train.seed") -> list[CellRun]:
    """Every sub-directory of `root` with metrics.jsonl or event files, in grid order (then by
    name)."""
    cells = []
    for workdir in sorted(glob.glob(os.path.join(root, "*"))):
        if not os.path.isdir(workdir) or not (
            os.path.exists(workdir_lib.path(workdir, workdir_lib.METRICS_JSONL))
            or glob.glob(os.path.join(workdir, workdir_lib.EVENTS_GLOB))
        ):
            continue
        meta = workdir_lib.read_cell(workdir) or {}
        ev = workdir_lib.read_eval(workdir)
        if ev is not None:
            ev = dict(ev, metrics={canonical_tag(k): v for k, v in ev.get("metrics", {}).items()})
        cells.append(
            CellRun(
                name=os.path.basename(workdir),
                workdir=workdir,
                index=int(meta.get("index", 1 << 30)),
                overrides=dict(meta.get("overrides", {})),
                seed_key=meta.get("seed_key", seed_key),
                scalars=read_cell_scalars(workdir),
                eval=ev,
                done=workdir_lib.is_finished(workdir),
            )
        )
    cells.sort(key=lambda c: (c.index, c.name))
    return cells


def _group(cells: Sequence[CellRun]) -> dict[str, list[CellRun]]:
    groups: dict[str, list[CellRun]] = {}
    for c in cells:
        groups.setdefault(c.variant, []).append(c)
    return groups


def reduce_series(values: np.ndarray, how: str = "final") -> float:
    """One number per run: 'final' (last value), 'best' (max), 'last:K' (mean of the last K)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan")
    if how == "final":
        return float(values[-1])
    if how == "best":
        return float(values.max())
    if how.startswith("last:") and how[5:].isdigit() and int(how[5:]) > 0:
        return float(values[-int(how[5:]) :].mean())
    raise ValueError(f"--reduce must be 'final', 'best' or 'last:K', got {how!r}")


def _interval(values, num_resamples: int, seed: int) -> dict:
    v = np.asarray(values, np.float64)
    point, lo, hi = stats.iqm_ci(v, num_resamples=num_resamples, seed=seed)
    return {
        "num_seeds": int(v.size),
        "iqm": point,
        "ci_low": lo,
        "ci_high": hi,
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
    }


# ----------------------------------------------------------------------------- tables


def summarize(
    cells: Sequence[CellRun], *, reduce: str = "final", num_resamples: int = 2000, seed: int = 0
) -> list[dict]:
    """Rows (variant, metric, num_seeds, iqm, ci_low, ci_high, mean, std, values, overrides...)."""
    rows = []
    for variant, group in _group(cells).items():
        tags = sorted(set().union(*(c.scalars for c in group)))
        for tag in tags:
            vals = [reduce_series(c.scalars[tag][1], reduce) for c in group if tag in c.scalars]
            vals = [v for v in vals if np.isfinite(v)]
            if not vals:
                continue
            rows.append(
                {
                    "variant": variant,
                    "metric": tag,
                    **_interval(vals, num_resamples, seed),
                    "values": ";".join(f"{v:.6g}" for v in vals),
                    **{k: v for k, v in group[0].variant_overrides.items()},
                }
            )
    return rows


def _cell_pass_at_k(cell: CellRun, reduce: str) -> dict[int, float]:
    if cell.eval is not None:
        metrics = cell.eval.get("metrics", {})
        return {
            int(m.group(1)): float(v)
            for k, v in metrics.items()
            if (m := _PASS_AT.fullmatch(canonical_tag(k)))
        }
    out = {}
    for tag, (_, values) in cell.scalars.items():
        m = re.fullmatch(r"eval/" + _PASS_AT.pattern, canonical_tag(tag))
        if m and values.size:
            out[int(m.group(1))] = reduce_series(values, reduce)
    return out


def pass_at_k_table(
    cells: Sequence[CellRun], *, reduce: str = "final", num_resamples: int = 2000, seed: int = 0
) -> list[dict]:
    """Rows (variant, k, num_seeds, iqm, ci_low, ci_high, mean, std) over seeds."""
    rows = []
    for variant, group in _group(cells).items():
        per_cell = [_cell_pass_at_k(c, reduce) for c in group]
        for k in sorted(set().union(*per_cell)):
            vals = [d[k] for d in per_cell if k in d]
            rows.append({"variant": variant, "k": k, **_interval(vals, num_resamples, seed)})
    return rows


def _aligned(group: Sequence[CellRun], tag: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps logged by every seed, and the values there: ([T], [S, T])."""
    series = [c.scalars[tag] for c in group if tag in c.scalars]
    if not series:
        return None
    steps = series[0][0]
    for s, _ in series[1:]:
        steps = np.intersect1d(steps, s)
    if steps.size == 0:
        return None
    return steps, np.stack([v[np.searchsorted(s, steps)] for s, v in series])


def fit_table(cells: Sequence[CellRun], tag: str) -> list[dict]:
    """ScaleRL sigmoid per variant on the seed-mean curve of `tag` against the step.

    A point at step 0 (the starting performance) fixes R0 and is not fitted;
    otherwise R0 is a free parameter.
    """
    rows = []
    for variant, group in _group(cells).items():
        aligned = _aligned(group, tag)
        if aligned is None:
            continue
        steps, values = aligned
        curve = values.mean(axis=0)
        r0 = float(curve[steps == 0][0]) if np.any(steps == 0) else None
        keep = steps > 0
        fit = stats.fit_sigmoid(steps[keep], curve[keep], r0=r0)
        rows.append({"variant": variant, "metric": tag, **fit})
    return rows


def entropy_fit_table(
    cells: Sequence[CellRun], perf_tag: str, entropy_tag: str = "train/entropy"
) -> list[dict]:
    """R = -a * exp(H) + b per variant, fitted on the seed-mean curves at steps both tags share."""
    rows = []
    for variant, group in _group(cells).items():
        both = [c for c in group if perf_tag in c.scalars and entropy_tag in c.scalars]
        h, r = _aligned(both, entropy_tag), _aligned(both, perf_tag)
        if h is None or r is None:
            continue
        steps = np.intersect1d(h[0], r[0])
        if steps.size < 3:
            continue
        hh = h[1][:, np.searchsorted(h[0], steps)].mean(axis=0)
        rr = r[1][:, np.searchsorted(r[0], steps)].mean(axis=0)
        a, b, r2 = fit_entropy_performance(hh, rr)
        rows.append(
            {
                "variant": variant,
                "performance": perf_tag,
                "entropy": entropy_tag,
                "a": a,
                "b": b,
                "r2": r2,
                "num_points": int(steps.size),
            }
        )
    return rows


# ----------------------------------------------------------------------------- plots


def _band(values: np.ndarray, num_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile-bootstrap band of the seed mean at every step; values [S, T]."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(num_resamples, values.shape[0]))
    means = values[idx].mean(axis=1)
    return np.quantile(means, 0.025, axis=0), np.quantile(means, 0.975, axis=0)


def _plot_curves(cells, tag: str, path: str, num_resamples: int, seed: int) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for variant, group in _group(cells).items():
        aligned = _aligned(group, tag)
        if aligned is None:
            continue
        steps, values = aligned
        (line,) = ax.plot(steps, values.mean(axis=0), label=f"{variant} (n={values.shape[0]})")
        if values.shape[0] > 1:
            lo, hi = _band(values, num_resamples, seed)
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(tag)
        ax.set_title(f"{tag}: seed mean, 95 % bootstrap band")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _plot_pass_at_k(rows: Sequence[dict], path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        k = np.array([r["k"] for r in rs])
        y = np.array([r["iqm"] for r in rs])
        err = np.array(
            [[r["iqm"] - r["ci_low"] for r in rs], [r["ci_high"] - r["iqm"] for r in rs]]
        )
        ax.errorbar(k, y, yerr=np.maximum(err, 0), marker="o", capsize=3, label=variant)
    ks = sorted({r["k"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (IQM over seeds)")
    ax.set_title("pass@k, 95 % bootstrap CI")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- writing


def _write_csv(path: str, rows: Sequence[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _fmt(r: dict) -> str:
    return f"{r['iqm']:.4g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]"


MAIN_METRICS = re.compile(
    r"^(train/(reward|accuracy|entropy|kl|response_length)|eval/(?!.*(@|_at_)\d+$).*)$"
)


def _markdown(
    summary,
    passk,
    fits,
    entropy_fits,
    reduce: str,
    incomplete: Sequence[str],
    metrics: Sequence[str] | None = None,
) -> str:
    lines = [
        f"Values: IQM over seeds [95 % percentile-bootstrap CI]; each seed reduced by `{reduce}`.",
        "",
    ]
    if incomplete:
        lines += [f"Unfinished cells included (no done.json): {', '.join(incomplete)}.", ""]
    variants = list(dict.fromkeys(r["variant"] for r in summary))
    if metrics is None:  # the CSV has every tag; the Markdown table the headline ones
        metrics = [m for m in dict.fromkeys(r["metric"] for r in summary) if MAIN_METRICS.match(m)]
    if metrics:
        lines += [
            "| variant | seeds | " + " | ".join(metrics) + " |",
            "|---|---|" + "---|" * len(metrics),
        ]
        cell = {(r["variant"], r["metric"]): r for r in summary}
        for v in variants:
            n = max(r["num_seeds"] for r in summary if r["variant"] == v)
            lines.append(
                f"| {v} | {n} | "
                + " | ".join(_fmt(cell[(v, m)]) if (v, m) in cell else "–" for m in metrics)
                + " |"
            )
        lines.append("")
    if passk:
        ks = sorted({r["k"] for r in passk})
        cell = {(r["variant"], r["k"]): r for r in passk}
        lines += [
            "pass@k:",
            "",
            "| variant | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        for v in dict.fromkeys(r["variant"] for r in passk):
            lines.append(
                f"| {v} | "
                + " | ".join(_fmt(cell[(v, k)]) if (v, k) in cell else "–" for k in ks)
                + " |"
            )
        lines.append("")
    if fits:
        lines += [
            f"Sigmoid fit R(C) = R0 + (A − R0) / (1 + (C_mid / C)^B) of `{fits[0]['metric']}` "
            "(seed mean) against the step:",
            "",
            "| variant | A (asymptote) | C_mid (midpoint) | B | R0 | R² | points |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in fits:
            lines.append(
                f"| {r['variant']} | {r['asymptote']:.4g} | {r['midpoint']:.4g} | "
                f"{r['exponent']:.3g} | {r['r0']:.4g} | {r['r2']:.3f} | {r['num_points']} |"
            )
        lines.append("")
    if entropy_fits:
        lines += [
            f"Entropy–performance fit R = −a·exp(H) + b of `{entropy_fits[0]['performance']}` on "
            f"`{entropy_fits[0]['entropy']}` (seed means):",
            "",
            "| variant | a | b | R² | points |",
            "|---|---|---|---|---|",
        ]
        for r in entropy_fits:
            lines.append(
                f"| {r['variant']} | {r['a']:.4g} | {r['b']:.4g} | {r['r2']:.3f} | {r['num_points']} |"
            )
        lines.append("")
    return "\n".join(lines)


def collate(
    root: str,
    *,
    out: str | None = None,
    reduce: str = "final",
    curves: Sequence[str] | None = None,
    fit_tag: str | None = None,
    entropy_tag: str = "train/entropy",
    seed_key: str = "train.seed",
    only_done: bool = False,
    metrics: Sequence[str] | None = None,
    num_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Write the tables and plots for the grid under `root`; returns them and the written paths."""
    reduce_series(np.zeros(1), reduce)  # validate the option early
    # Tags may be given in the old spelling ('eval/pass@4'); the scalars carry today's names.
    metrics = [canonical_tag(m) for m in metrics] if metrics is not None else None
    curves = [canonical_tag(t) for t in curves] if curves is not None else None
    fit_tag = canonical_tag(fit_tag) if fit_tag else fit_tag
    entropy_tag = canonical_tag(entropy_tag)
    out = out or os.path.join(root, "results")
    cells = load_cells(root, seed_key)
    if only_done:
        cells = [c for c in cells if c.done]
    if not cells:
        raise SystemExit(f"collate: no cell with metrics.jsonl or event files under {root}")
    incomplete = [c.name for c in cells if not c.done]
    os.makedirs(out, exist_ok=True)
    summary = summarize(cells, reduce=reduce, num_resamples=num_resamples, seed=seed)
    passk = pass_at_k_table(cells, reduce=reduce, num_resamples=num_resamples, seed=seed)
    all_tags = set().union(*(c.scalars for c in cells))
    if fit_tag is None:
        fit_tag = next((t for t in ("eval/accuracy", "train/reward") if t in all_tags), None)
    fits = fit_table(cells, fit_tag) if fit_tag else []
    entropy_fits = entropy_fit_table(cells, fit_tag, entropy_tag) if fit_tag else []
    paths = {
        "summary.csv": os.path.join(out, "summary.csv"),
        "summary.md": os.path.join(out, "summary.md"),
    }
    _write_csv(paths["summary.csv"], summary)
    if passk:
        paths["passk.csv"] = os.path.join(out, "passk.csv")
        _write_csv(paths["passk.csv"], passk)
    if fits:
        paths["fits.csv"] = os.path.join(out, "fits.csv")
        _write_csv(paths["fits.csv"], fits)
    if entropy_fits:
        paths["entropy_fit.csv"] = os.path.join(out, "entropy_fit.csv")
        _write_csv(paths["entropy_fit.csv"], entropy_fits)
    with open(paths["summary.md"], "w") as f:
        f.write(_markdown(summary, passk, fits, entropy_fits, reduce, incomplete, metrics))
    if curves is None:
        curves = [
            t
            for t in (
                "train/reward",
                "train/accuracy",
                "eval/accuracy",
                "train/entropy",
                "eval/entropy",
            )
            if t in all_tags
        ]
    for tag in curves:
        path = os.path.join(out, "curve_" + re.sub(r"[^A-Za-z0-9]+", "_", tag).strip("_") + ".png")
        if _plot_curves(cells, tag, path, min(num_resamples, 1000), seed):
            paths[os.path.basename(path)] = path
    if _plot_pass_at_k(passk, os.path.join(out, "pass_at_k.png")):
        paths["pass_at_k.png"] = os.path.join(out, "pass_at_k.png")
    return {
        "summary": summary,
        "passk": passk,
        "fits": fits,
        "entropy_fits": entropy_fits,
        "paths": paths,
        "incomplete": incomplete,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--reduce", default="final", help="final | best | last:K")
    p.add_argument("--curves", default=None, help="comma-separated scalar tags to plot")
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated tags for the Markdown table (default: train reward, accuracy, "
        "entropy, kl, response_length and eval/* without _at_k; the CSV has every tag)",
    )
    p.add_argument(
        "--fit-tag",
        default=None,
        help="tag for the sigmoid fit (default eval/accuracy or train/reward)",
    )
    p.add_argument(
        "--entropy-tag", default="train/entropy", help="H of the entropy-performance fit"
    )
    p.add_argument("--only-done", action="store_true", help="leave out cells without done.json")
    p.add_argument("--seed-key", default="train.seed")
    p.add_argument("--num-resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result = collate(
        args.root,
        out=args.out,
        reduce=args.reduce,
        curves=args.curves.split(",") if args.curves else None,
        fit_tag=args.fit_tag,
        metrics=args.metrics.split(",") if args.metrics else None,
        entropy_tag=args.entropy_tag,
        seed_key=args.seed_key,
        only_done=args.only_done,
        num_resamples=args.num_resamples,
        seed=args.seed,
    )
    for path in result["paths"].values():
        print(f"[collate] wrote {path}")
    if result["incomplete"]:
        print(
            f"[collate] note: {len(result['incomplete'])} cell(s) without done.json: "
            + ", ".join(result["incomplete"])
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
