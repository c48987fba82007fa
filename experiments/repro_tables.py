"""Tables, plots and verdicts of the pre-registered reproductions (docs/reproductions/), from a
finished grid's per-prompt counts: the headroom study (`nsr_headroom.md` section 4), its
crossover analysis (`crossover.md`) and the entropy study (`entropy_mechanism.md`).

`experiments/repro_headroom.py` runs these as its analyse / crossover / entropy_fit stages. The
statistics are `experiments/repro_analysis.py`'s and `jaxrl_llm.stats`'s; this module only
loads the runs, applies the designs' rule tables and writes the files. Every verdict is one of
`VERDICTS`; a claim whose variants have no finished runs is "inconclusive", with a note.

Verdicts are judged at k = 1 and at the largest k of the grid (256 at the pre-registered
n = 256); "> 0" means the whole 95 % interval lies above 0.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from experiments import collate, repro_analysis
from jaxrl_llm import stats

__all__ = [
    "VERDICTS",
    "MARGIN",
    "VariantRuns",
    "StudyData",
    "variant_name",
    "load_study",
    "verdict",
    "headroom_verdicts",
    "crossover_category",
    "crossover_verdicts",
    "write_headroom_analysis",
    "write_crossover_analysis",
    "write_entropy_analysis",
]

VERDICTS = ("reproduced", "not reproduced", "inconclusive")
MARGIN = 0.02  # the non-inferiority margin of nsr_headroom.md section 4
CROSSOVER_CATEGORIES = (
    "crossover within k <= K",
    "no crossover within k <= K",
    "never leads",
    "inconclusive",
)
ENTROPY_TAG, ACCURACY_TAG, EVAL_TAG = "train/entropy", "train/accuracy", "eval/accuracy"


@dataclasses.dataclass
class VariantRuns:
    """The finished, evaluated seeds of one variant: `curves [S, P, K]` per-prompt pass@k."""

    name: str
    seeds: list[int]
    cells: list
    curves: np.ndarray


@dataclasses.dataclass
class StudyData:
    n: int
    ks: np.ndarray
    variants: dict  # name -> VariantRuns, in the design's order; only variants with runs
    expected: list  # every variant of the design
    base: np.ndarray | None  # [P, K] per-prompt pass@k of the base checkpoint
    prompts: list | None
    not_evaluated: list  # cell names without per-prompt counts (unfinished or not evaluated)

    @property
    def k_max(self) -> int:
        return int(self.ks[-1])


def variant_name(overrides: dict, variants_map: dict, seed_key: str = "train.seed") -> str | None:
    """The design's name of a cell from its overrides (the seed aside); None if none matches."""
    rest = {k: v for k, v in overrides.items() if k != seed_key}
    for name, spec in variants_map.items():
        if rest == spec:
            return name
    return None


def _ks(n: int) -> np.ndarray:
    return np.array([2**i for i in range(n.bit_length()) if 2**i <= n])


def load_study(grid_root: str, variants_map: dict, *, base_eval: str | None = None) -> StudyData:
    """Per-prompt pass@k of every evaluated cell under `grid_root`, grouped by variant, and of
    the base checkpoint (`base_eval`, an eval.json). Fails if two evaluations saw different
    prompts (the paired analyses need the same prompts in the same order)."""
    cells = collate.load_cells(grid_root)
    groups: dict[str, list] = {name: [] for name in variants_map}
    not_evaluated, n, prompts = [], None, None
    for cell in cells:
        name = variant_name(cell.overrides, variants_map, cell.seed_key)
        if name is None:
            continue
        if cell.eval is None or "correct_counts" not in cell.eval:
            not_evaluated.append(cell.name)
            continue
        if n is None:
            n = int(cell.eval["n"])
        elif int(cell.eval["n"]) != n:
            raise ValueError(f"{cell.name}: n = {cell.eval['n']}, other cells {n}")
        if prompts is None:
            prompts = cell.eval.get("prompts")
        elif cell.eval.get("prompts") != prompts:
            raise ValueError(f"{cell.name} was evaluated on other prompts than the other cells")
        groups[name].append(cell)
    base = None
    if base_eval is not None and os.path.exists(base_eval):
        record = json.load(open(base_eval))
        if n is None:
            n = int(record["n"])
        if int(record["n"]) != n:
            raise ValueError(f"{base_eval}: n = {record['n']}, the cells {n}")
        if prompts is not None and record.get("prompts") != prompts:
            raise ValueError(f"{base_eval} was evaluated on other prompts than the cells")
        prompts = record.get("prompts", prompts)
        base = repro_analysis.per_prompt_pass_at_k(record["correct_counts"], n, _ks(n))
    if n is None:
        raise SystemExit(f"no evaluated cell with correct_counts under {grid_root}")
    ks = _ks(n)
    variants = {}
    for name, group in groups.items():
        if group:
            counts = np.array([c.eval["correct_counts"] for c in group])
            variants[name] = VariantRuns(
                name=name,
                seeds=[int(c.overrides.get(c.seed_key, 0)) for c in group],
                cells=group,
                curves=repro_analysis.per_prompt_pass_at_k(counts, n, ks),
            )
    return StudyData(n, ks, variants, list(variants_map), base, prompts, not_evaluated)


# ----------------------------------------------------------------------------- verdict helpers


def verdict(reproduced: bool, not_reproduced: bool) -> tuple[str, str]:
    """(verdict, note) from the two rule columns; both holding at once is reported, not judged."""
    if reproduced and not_reproduced:
        return "inconclusive", "both the reproduced and the not-reproduced rule hold"
    if reproduced:
        return "reproduced", ""
    if not_reproduced:
        return "not reproduced", ""
    return "inconclusive", ""


def _at(d: dict, ks: np.ndarray, k: int) -> tuple[float, float, float]:
    j = int(np.nonzero(ks == k)[0][0])
    return float(d["diff"][j]), float(d["ci_low"][j]), float(d["ci_high"][j])


def _fmt_diff(label: str, t) -> str:
    return f"{label} {t[0]:+.4f} [{t[1]:+.4f}, {t[2]:+.4f}]"


def _row(claim: str, rule: tuple[bool, bool] | None, evidence: str, missing=()) -> dict:
    if missing:
        return {
            "claim": claim,
            "verdict": "inconclusive",
            "evidence": evidence,
            "note": "not judged: no finished runs of " + ", ".join(missing),
        }
    v, note = verdict(*rule)
    return {"claim": claim, "verdict": v, "evidence": evidence, "note": note}


def _differences(data: StudyData, num_resamples: int) -> tuple[dict, dict]:
    """(variant - base per k, {(a, b): a - b per k}) for the pairs the rules use."""
    kw = dict(num_resamples=num_resamples, seed=0)
    vs_base = {}
    if data.base is not None:
        vs_base = {
            name: repro_analysis.paired_difference_per_k(data.base, runs.curves, **kw)
            for name, runs in data.variants.items()
        }
    pairs = [("w_reinforce", x) for x in data.expected if x != "w_reinforce"] + [("nsr", "psr")]
    pairwise = {
        (a, b): repro_analysis.paired_difference_per_k(
            data.variants[b].curves, data.variants[a].curves, **kw
        )
        for a, b in pairs
        if a in data.variants and b in data.variants
    }
    return vs_base, pairwise


def headroom_verdicts(data: StudyData, vs_base: dict, pairwise: dict) -> list[dict]:
    """Rows (claim, verdict, evidence, note) by nsr_headroom.md section 4's rule table."""
    ks, K = data.ks, data.k_max
    rows = []

    def base_claim(claim, variant, k, rule):
        if variant not in vs_base:
            return _row(claim, None, "", [variant])
        t = _at(vs_base[variant], ks, k)
        return _row(claim, rule(*t), _fmt_diff(f"{variant} - base at k={k}:", t))

    m = MARGIN
    rows.append(base_claim("N1", "nsr", K, lambda d, lo, hi: (lo > -m, hi < -m)))
    rows.append(base_claim("N2", "nsr", 1, lambda d, lo, hi: (lo > 0, hi < 0 or hi < 0.01)))
    rows.append(base_claim("P1", "psr", 1, lambda d, lo, hi: (lo > 0, hi <= 0)))
    rows.append(base_claim("P2", "psr", K, lambda d, lo, hi: (hi < 0, lo >= 0)))
    others = [x for x in data.expected if x != "w_reinforce"]
    missing = [x for x in ["w_reinforce", *others] if x not in data.variants]
    if missing:
        rows.append(_row("W1", None, "", missing))
    else:
        at = {(x, k): _at(pairwise[("w_reinforce", x)], ks, k) for x in others for k in (1, K)}
        rep = all(at[(x, k)][1] > -m for x in others for k in (1, K))
        rep = rep and at[("grpo", K)][1] > 0 if "grpo" in others else rep
        rows.append(
            _row(
                "W1",
                (rep, any(at[(x, k)][2] < 0 for x in others for k in (1, K))),
                "; ".join(_fmt_diff(f"w_reinforce - {x} at k={k}:", at[(x, k)]) for x, k in at),
            )
        )
    if ("nsr", "psr") in pairwise:
        t = _at(pairwise[("nsr", "psr")], ks, K)
        rows.append(_row("M1", (t[1] > 0, t[2] < 0), _fmt_diff(f"nsr - psr at k={K}:", t)))
    else:
        rows.append(_row("M1", None, "", [x for x in ("nsr", "psr") if x not in data.variants]))
    return rows


# ----------------------------------------------------------------------------- writing


def _write_csv(path: str, rows: Sequence[dict], fields: Sequence[str]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _md_table(rows: Sequence[dict], fields: Sequence[str]) -> list[str]:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    out += ["| " + " | ".join(cell(r.get(f, "")) for f in fields) + " |" for r in rows]
    return out + [""]


def _plot(path: str, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log2_axis(ax, ks):
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), [str(int(k)) for k in ks])
    ax.set_xlabel("k")


PASSK_FIELDS = ("variant", "k", "num_seeds", "iqm", "ci_low", "ci_high", "mean", "std", "interval")
DIFF_FIELDS = ("variant", "against", "k", "diff", "ci_low", "ci_high", "sign")
VERDICT_FIELDS = ("claim", "verdict", "evidence", "note")
ENTROPY_FIELDS = ("variant", "step", "num_seeds", "mean", "ci_low", "ci_high")


def _passk_rows(data: StudyData, num_resamples: int) -> list[dict]:
    """IQM over seeds with a bootstrap interval per variant and k; the base row's interval is
    over prompts (one checkpoint)."""
    rows = []
    kw = dict(num_resamples=num_resamples, seed=0)
    if data.base is not None:
        for j, k in enumerate(data.ks):
            mean, lo, hi = stats.mean_ci(data.base[:, j], **kw)
            rows.append(
                dict(variant="base", k=int(k), num_seeds=1, iqm=mean, ci_low=lo, ci_high=hi)
                | dict(mean=mean, std=0.0, interval="prompts")
            )
    for name, runs in data.variants.items():
        per_seed = runs.curves.mean(axis=1)  # [S, K]
        for j, k in enumerate(data.ks):
            v = per_seed[:, j]
            point, lo, hi = stats.iqm_ci(v, **kw)
            std = float(v.std(ddof=1)) if v.size > 1 else 0.0
            rows.append(
                dict(variant=name, k=int(k), num_seeds=int(v.size), iqm=point, ci_low=lo)
                | dict(ci_high=hi, mean=float(v.mean()), std=std, interval="seeds")
            )
    return rows


def _diff_rows(diffs: dict, ks, against=None) -> list[dict]:
    rows = []
    for key, d in diffs.items():
        a, b = (key, against) if against else key
        for j, k in enumerate(ks):
            rows.append(
                dict(variant=a, against=b, k=int(k), diff=float(d["diff"][j]))
                | dict(
                    ci_low=float(d["ci_low"][j]),
                    ci_high=float(d["ci_high"][j]),
                    sign=int(d["sign"][j]),
                )
            )
    return rows


def _series(cell, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
    s = cell.scalars.get(tag)
    return None if s is None or s[0].size == 0 else s


def _curve_rows(data: StudyData, tag: str, num_resamples: int) -> list[dict]:
    """Seed mean of `tag` per step with a 95 % bootstrap band (steps every seed logged)."""
    rows = []
    for name, runs in data.variants.items():
        series = [s for c in runs.cells if (s := _series(c, tag)) is not None]
        if not series:
            continue
        steps = series[0][0]
        for s, _ in series[1:]:
            steps = np.intersect1d(steps, s)
        values = np.stack([v[np.searchsorted(s, steps)] for s, v in series])  # [S, T]
        for t, step in enumerate(steps):
            mean, lo, hi = stats.mean_ci(values[:, t], num_resamples=num_resamples, seed=0)
            rows.append(
                dict(variant=name, step=int(step), num_seeds=values.shape[0], mean=mean)
                | dict(ci_low=lo, ci_high=hi)
            )
    return rows


def _plot_passk(path, rows, ks, title):
    def draw(ax):
        for v in dict.fromkeys(r["variant"] for r in rows):
            rs = [r for r in rows if r["variant"] == v]
            y = np.array([r["iqm"] for r in rs])
            err = np.array([[r["iqm"] - r["ci_low"], r["ci_high"] - r["iqm"]] for r in rs]).T
            style = dict(color="black", linestyle="--") if v == "base" else {}
            ax.errorbar(
                [r["k"] for r in rs],
                y,
                yerr=np.maximum(err, 0),
                marker="o",
                capsize=3,
                label=v,
                **style,
            )
        _log2_axis(ax, ks)
        ax.set_ylabel("pass@k")
        ax.set_title(title)

    return _plot(path, draw)


def _plot_diffs(path, rows, ks, title):
    def draw(ax):
        for v in dict.fromkeys(r["variant"] for r in rows):
            rs = [r for r in rows if r["variant"] == v]
            (line,) = ax.plot([r["k"] for r in rs], [r["diff"] for r in rs], marker="o", label=v)
            ax.fill_between(
                [r["k"] for r in rs],
                [r["ci_low"] for r in rs],
                [r["ci_high"] for r in rs],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
        ax.axhline(0.0, color="black", linewidth=0.8)
        _log2_axis(ax, ks)
        ax.set_ylabel("difference in pass@k")
        ax.set_title(title)

    return _plot(path, draw)


def _plot_curve(path, rows, ylabel):
    def draw(ax):
        for v in dict.fromkeys(r["variant"] for r in rows):
            rs = [r for r in rows if r["variant"] == v]
            x = [r["step"] for r in rs]
            (line,) = ax.plot(x, [r["mean"] for r in rs], label=f"{v} (n={rs[0]['num_seeds']})")
            ax.fill_between(
                x,
                [r["ci_low"] for r in rs],
                [r["ci_high"] for r in rs],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel}: seed mean, 95 % bootstrap band")

    return _plot(path, draw)


def _header(data: StudyData, title: str) -> list[str]:
    lines = [f"# {title}", ""]
    lines.append(
        f"n = {data.n} samples per prompt, k = {', '.join(map(str, data.ks))}; verdicts at "
        f"k = 1 and k = {data.k_max}. Seeds per variant: "
        + ", ".join(f"{v} {len(r.seeds)}" for v, r in data.variants.items())
        + "."
    )
    absent = [v for v in data.expected if v not in data.variants]
    if absent:
        lines.append(f"Variants without finished, evaluated runs: {', '.join(absent)}.")
    if data.not_evaluated:
        lines.append(
            f"Cells without per-prompt counts (left out): {', '.join(data.not_evaluated)}."
        )
    return lines + [""]


def write_headroom_analysis(
    data: StudyData, out: str, *, num_resamples: int = 2000, pilot_eval: str | None = None
) -> list[str]:
    """nsr_headroom.md section 4 into `out`: passk_iqm.csv, paired_vs_base.csv, pairwise.csv,
    entropy.csv, verdicts.csv, summary.md and pass_at_k.png, paired_vs_base.png, entropy.png."""
    if data.base is None:
        raise SystemExit("the analysis needs the base model's eval.json (the study stage)")
    os.makedirs(out, exist_ok=True)
    vs_base, pairwise = _differences(data, num_resamples)
    passk = _passk_rows(data, num_resamples)
    base_rows = _diff_rows(vs_base, data.ks, against="base")
    pair_rows = _diff_rows(pairwise, data.ks)
    entropy = _curve_rows(data, ENTROPY_TAG, min(num_resamples, 1000))
    verdicts = headroom_verdicts(data, vs_base, pairwise)
    p = lambda name: os.path.join(out, name)  # noqa: E731
    paths = [
        _write_csv(p("passk_iqm.csv"), passk, PASSK_FIELDS),
        _write_csv(p("paired_vs_base.csv"), base_rows, DIFF_FIELDS),
        _write_csv(p("pairwise.csv"), pair_rows, DIFF_FIELDS),
        _write_csv(p("entropy.csv"), entropy, ENTROPY_FIELDS),
        _write_csv(p("verdicts.csv"), verdicts, VERDICT_FIELDS),
        _plot_passk(p("pass_at_k.png"), passk, data.ks, "pass@k: IQM over seeds, 95 % CI"),
        _plot_diffs(p("paired_vs_base.png"), base_rows, data.ks, "variant - base, 95 % CI"),
    ]
    if entropy:
        paths.append(_plot_curve(p("entropy.png"), entropy, ENTROPY_TAG))
    lines = _header(data, "PSR / NSR / W-REINFORCE with headroom: analysis")
    if pilot_eval is not None and data.prompts is not None:
        pilot_prompts = json.load(open(pilot_eval)).get("prompts")
        if pilot_prompts is not None:
            overlap = len(set(data.prompts) & set(pilot_prompts))
            lines += [
                f"Study prompts also among the pilot's prompts: {overlap} of {len(data.prompts)}.",
                "",
            ]
    lines += ["## Verdicts", ""] + _md_table(verdicts, VERDICT_FIELDS)
    lines += ["## pass@k (IQM over seeds; base: mean, interval over prompts)", ""]
    lines += _md_table(passk, PASSK_FIELDS)
    lines += ["## Paired difference against the base model", ""]
    lines += _md_table(base_rows, DIFF_FIELDS)
    lines += ["## Differences between variants", ""] + _md_table(pair_rows, DIFF_FIELDS)
    with open(p("summary.md"), "w") as f:
        f.write("\n".join(lines))
    return paths + [p("summary.md")]


# ----------------------------------------------------------------------------- crossover


def crossover_category(point, frac_none: float, diff_k1_hi: float, k_min: float) -> str:
    """crossover.md's per-variant verdict, with K the largest k of the grid."""
    if point is not None and point > k_min and frac_none < 0.025:
        return "crossover within k <= K"
    if frac_none > 0.975:
        return "no crossover within k <= K"
    if point is not None and point == k_min and diff_k1_hi < 0:
        return "never leads"
    return "inconclusive"


def crossover_verdicts(table: dict, vs_base: dict, ks, expected: Sequence[str]) -> list[dict]:
    """X1-X4 of crossover.md from the per-variant rows (`table[name]`: point, lo, hi,
    frac_no_crossover, category) and the differences against the base."""
    K, m = int(ks[-1]), MARGIN
    within, none = "crossover within k <= K", "no crossover within k <= K"
    rows = []

    def below_at_K(v):
        return _at(vs_base[v], ks, K)[2] < 0

    def x_claim(claim, names):
        missing = [v for v in names if v not in table]
        if missing:
            return _row(claim, None, "", missing)
        rep = all(table[v]["category"] == within and below_at_K(v) for v in names)
        notrep = any(table[v]["category"] == none for v in names)
        ev = "; ".join(
            f"{v}: {table[v]['category']}, "
            + _fmt_diff(f"{v} - base at k={K}:", _at(vs_base[v], ks, K))
            for v in names
        )
        return _row(claim, (rep, notrep), ev)

    rows.append(x_claim("X1", [v for v in ("grpo", "ppo") if v in expected]))
    rows.append(x_claim("X2", ["psr"]))
    if "nsr" not in table:
        rows.append(_row("X3", None, "", ["nsr"]))
    else:
        t = _at(vs_base["nsr"], ks, K)
        cat = table["nsr"]["category"]
        rows.append(
            _row(
                "X3",
                (cat == none and t[1] > -m, cat == within and t[2] < 0),
                f"nsr: {cat}, " + _fmt_diff(f"nsr - base at k={K}:", t),
            )
        )
    missing = [v for v in ("nsr", "psr", "grpo") if v not in table]
    if missing:
        rows.append(_row("X4", None, "", missing))
    else:
        n = table["nsr"]
        rep = all(n["lo"] > table[v]["hi"] for v in ("psr", "grpo"))
        notrep = all(n["hi"] < table[v]["lo"] for v in ("psr", "grpo"))
        ev = "; ".join(
            f"{v}: [{table[v]['lo']:g}, {table[v]['hi']:g}]" for v in ("nsr", "psr", "grpo")
        )
        rows.append(_row("X4", (rep, notrep), ev))
    return rows


def write_crossover_analysis(data: StudyData, out: str, *, num_resamples: int = 2000) -> list[str]:
    """crossover.md into `out`: crossover.csv (variant, point, lo, hi, frac_no_crossover,
    verdict; inf = no crossover), crossover_verdicts.csv, crossover.md, crossover.png."""
    if data.base is None:
        raise SystemExit("the crossover analysis needs the base model's eval.json")
    vs_base, _ = _differences(data, num_resamples)
    table, rows = {}, []
    for name, runs in data.variants.items():
        point, lo, hi, frac = repro_analysis.crossover_interval(
            data.ks, runs.curves, data.base, num_resamples=num_resamples, seed=0
        )
        cat = crossover_category(point, frac, _at(vs_base[name], data.ks, 1)[2], data.ks[0])
        table[name] = dict(point=point, lo=lo, hi=hi, frac_no_crossover=frac, category=cat)
        rows.append(
            dict(variant=name, point=math.inf if point is None else point, lo=lo, hi=hi)
            | dict(frac_no_crossover=frac, verdict=cat.replace("K", str(data.k_max)))
        )
    verdicts = crossover_verdicts(table, vs_base, data.ks, data.expected)
    p = lambda name: os.path.join(out, name)  # noqa: E731
    os.makedirs(out, exist_ok=True)
    fields = ("variant", "point", "lo", "hi", "frac_no_crossover", "verdict")
    paths = [
        _write_csv(p("crossover.csv"), rows, fields),
        _write_csv(p("crossover_verdicts.csv"), verdicts, VERDICT_FIELDS),
    ]

    def draw(ax):
        ax.plot(data.ks, data.base.mean(0), "k--", marker="o", label="base")
        for name, runs in data.variants.items():
            ax.plot(data.ks, runs.curves.mean((0, 1)), marker="o", label=name)
        _log2_axis(ax, data.ks)
        ax.set_ylabel("pass@k (seed and prompt mean)")
        ax.set_title("pass@k against the base model")

    paths.append(_plot(p("crossover.png"), draw))
    lines = _header(data, "Reasoning-boundary crossover: analysis")
    lines += ["## Verdicts", ""] + _md_table(verdicts, VERDICT_FIELDS)
    lines += ["## Crossover k per variant (inf: none within the grid)", ""]
    lines += _md_table(rows, fields)
    with open(p("crossover.md"), "w") as f:
        f.write("\n".join(lines))
    return paths + [p("crossover.md")]


# ----------------------------------------------------------------------------- entropy study


def _eval_points(cell) -> tuple[np.ndarray, np.ndarray] | None:
    """(H, R) at the evaluation steps: R = eval/accuracy, H = the mean train/entropy over the
    5 logged steps ending at that step (step 0: the first logged step)."""
    ev, ent = _series(cell, EVAL_TAG), _series(cell, ENTROPY_TAG)
    if ev is None or ent is None:
        return None
    hs = []
    for step in ev[0]:
        upto = ent[1][ent[0] <= step][-5:] if step > 0 else ent[1][:1]
        hs.append(upto.mean() if upto.size else np.nan)
    return np.array(hs), ev[1]


def _moving_mean(x: np.ndarray, window: int = 10) -> np.ndarray:
    c = np.cumsum(np.r_[0.0, x])
    i = np.arange(1, x.size + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def _fit_run(h, r) -> dict:
    try:
        fit = repro_analysis.fit_entropy_performance_runs(np.atleast_2d(h), np.atleast_2d(r))
        return {k: float(v[0]) for k, v in fit.items()} | {"identifiable": True, "note": ""}
    except ValueError as e:
        nan = float("nan")
        return dict(a=nan, b=nan, r2=nan, rmse=nan, identifiable=False, note=str(e))


def write_entropy_analysis(data: StudyData, out: str, *, num_resamples: int = 2000) -> list[str]:
    """entropy_mechanism.md's analysis into `out`: entropy_fit_runs.csv, entropy_fit.csv,
    entropy_fit_secondary.csv, final_entropy.csv, vs_grpo.csv, passk_iqm.csv, entropy.csv,
    verdicts.csv, summary.md, entropy.png, pass_at_k.png."""
    os.makedirs(out, exist_ok=True)
    kw = dict(num_resamples=num_resamples, seed=0)
    run_rows, fit_rows, secondary, final_rows = [], [], [], []
    final = {}
    for name, runs in data.variants.items():
        fits = []
        for seed, cell in zip(runs.seeds, runs.cells):
            points = _eval_points(cell)
            fit = _fit_run(*points) if points is not None else _fit_run([], [])
            fits.append(fit)
            run_rows.append(dict(variant=name, seed=seed) | fit)
            acc, ent = _series(cell, ACCURACY_TAG), _series(cell, ENTROPY_TAG)
            if acc is not None and ent is not None:
                steps = np.intersect1d(acc[0], ent[0])
                h = _moving_mean(ent[1][np.searchsorted(ent[0], steps)])
                r = _moving_mean(acc[1][np.searchsorted(acc[0], steps)])
                secondary.append(dict(variant=name, seed=seed) | _fit_run(h, r))
            cov = [s for tag, s in cell.scalars.items() if tag.endswith("cov_frac")]
            inactive = bool(cov) and all(np.all(v == 0) for _, v in cov)
            first = float(ent[1][0]) if ent is not None else float("nan")
            last = float(ent[1][-10:].mean()) if ent is not None else float("nan")
            final_rows.append(
                dict(variant=name, seed=seed, first_entropy=first, final_entropy=last)
                | dict(intervention_inactive=inactive)
            )
        final[name] = np.array([r["final_entropy"] for r in final_rows if r["variant"] == name])
        r2 = np.array([f["r2"] for f in fits if f["identifiable"] and np.isfinite(f["r2"])])
        point, lo, hi = stats.iqm_ci(r2, **kw) if r2.size else (float("nan"),) * 3
        fit_rows.append(
            dict(variant=name, num_runs=len(fits), num_identifiable=int(r2.size))
            | dict(r2_iqm=point, ci_low=lo, ci_high=hi)
            | dict(a_positive=sum(f["identifiable"] and f["a"] > 0 for f in fits))
        )
    vs = {}
    if "grpo" in data.variants:
        g = data.variants["grpo"]
        for name, runs in data.variants.items():
            if name == "grpo":
                continue
            vs[(name, "pass@k")] = repro_analysis.paired_difference_per_k(
                g.curves, runs.curves, **kw
            )
            vs[(name, "final_entropy")] = repro_analysis.paired_difference_per_k(
                final["grpo"][:, None, None], final[name][:, None, None], **kw
            )
    vs_rows = []
    for (name, metric), d in vs.items():
        ks = data.ks if metric == "pass@k" else [0]
        for row in _diff_rows({name: d}, ks, against="grpo"):
            vs_rows.append(row | {"metric": metric})
    verdicts = _entropy_verdicts(data, fit_rows, final_rows, vs)
    passk = _passk_rows(data, num_resamples)
    entropy = _curve_rows(data, ENTROPY_TAG, min(num_resamples, 1000))
    p = lambda name: os.path.join(out, name)  # noqa: E731
    fit_fields = ("variant", "seed", "a", "b", "r2", "rmse", "identifiable", "note")
    paths = [
        _write_csv(p("entropy_fit_runs.csv"), run_rows, fit_fields),
        _write_csv(
            p("entropy_fit.csv"),
            fit_rows,
            (
                "variant",
                "num_runs",
                "num_identifiable",
                "r2_iqm",
                "ci_low",
                "ci_high",
                "a_positive",
            ),
        ),
        _write_csv(p("entropy_fit_secondary.csv"), secondary, fit_fields),
        _write_csv(
            p("final_entropy.csv"),
            final_rows,
            ("variant", "seed", "first_entropy", "final_entropy", "intervention_inactive"),
        ),
        _write_csv(p("vs_grpo.csv"), vs_rows, ("metric", *DIFF_FIELDS)),
        _write_csv(p("passk_iqm.csv"), passk, PASSK_FIELDS),
        _write_csv(p("entropy.csv"), entropy, ENTROPY_FIELDS),
        _write_csv(p("verdicts.csv"), verdicts, VERDICT_FIELDS),
        _plot_passk(p("pass_at_k.png"), passk, data.ks, "pass@k: IQM over seeds, 95 % CI"),
    ]
    if entropy:
        paths.append(_plot_curve(p("entropy.png"), entropy, ENTROPY_TAG))
    lines = _header(data, "Entropy mechanism: analysis")
    lines += ["## Verdicts (E5, the entropy bonus, is reported only: see vs_grpo)", ""]
    lines += _md_table(verdicts, VERDICT_FIELDS)
    lines += ["## R = -a exp(H) + b per variant (IQM of r2 over identifiable runs)", ""]
    lines += _md_table(fit_rows, list(fit_rows[0]) if fit_rows else [])
    lines += ["## Final entropy per run", ""] + _md_table(final_rows, list(final_rows[0]))
    lines += ["## Against GRPO", ""] + _md_table(vs_rows, ("metric", *DIFF_FIELDS))
    with open(p("summary.md"), "w") as f:
        f.write("\n".join(lines))
    return paths + [p("summary.md")]


def _entropy_verdicts(data: StudyData, fit_rows, final_rows, vs) -> list[dict]:
    """E1a, E1b, E2 (clip_cov, kl_cov), E3 (clip_cov, kl_cov), E4 of entropy_mechanism.md."""
    K, ks = data.k_max, data.ks
    rows = []
    g_runs = [r for r in final_rows if r["variant"] == "grpo"]
    if not g_runs:
        return [_row(c, None, "", ["grpo"]) for c in ("E1a", "E1b", "E2", "E3", "E4")]
    fell = sum(r["final_entropy"] < r["first_entropy"] for r in g_runs)
    rows.append(
        _row("E1a", (fell == len(g_runs), fell <= 2), f"grpo: fell in {fell} of {len(g_runs)}")
    )
    f = next(r for r in fit_rows if r["variant"] == "grpo")
    need = math.ceil(0.8 * f["num_runs"])  # 4 of 5
    rep = f["r2_iqm"] >= 0.8 and f["ci_low"] >= 0.6 and f["a_positive"] >= need
    rows.append(
        _row(
            "E1b",
            (bool(rep), bool(f["r2_iqm"] < 0.5)),
            f"grpo: IQM r2 {f['r2_iqm']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}] over "
            f"{f['num_identifiable']} runs with a fit and a finite r2; a > 0 in {f['a_positive']} "
            f"of {f['num_runs']}",
        )
    )
    for claim, arms, what in (
        ("E2", ("clip_cov", "kl_cov"), "final_entropy"),
        ("E3", ("clip_cov", "kl_cov"), "pass@k"),
        ("E4", ("clip_higher",), "final_entropy"),
    ):
        for arm in arms:
            label = f"{claim} ({arm})"
            if (arm, what) not in vs:
                rows.append(_row(label, None, "", [arm]))
                continue
            d = vs[(arm, what)]
            if what == "final_entropy":
                t = _at(d, np.array([0]), 0)
                ev = _fmt_diff(f"final entropy {arm} - grpo:", t)
                rule = (t[1] > 0, t[2] < 0)
            else:
                t1, tk = _at(d, ks, 1), _at(d, ks, K)
                ev = _fmt_diff(f"{arm} - grpo at k=1:", t1) + "; "
                ev += _fmt_diff(f"at k={K}:", tk)
                rule = (t1[1] > 0 and tk[1] > 0, t1[2] < 0 or tk[2] < 0)
            row = _row(label, rule, ev)
            if arm in ("clip_cov", "kl_cov") and any(
                r["intervention_inactive"] for r in final_rows if r["variant"] == arm
            ):
                row |= {"verdict": "inconclusive", "note": "intervention inactive in some run"}
            rows.append(row)
    return rows
