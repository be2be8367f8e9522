"""Best-of-n overoptimization audit: how far can a proxy reward be pushed before the gold falls?

    tether audit overoptimization --policy PATH --prompts FILE --proxy SPEC --gold SPEC \\
        [--max-n 256] [--max-new-tokens 64] --out DIR
    tether audit overoptimization --samples DIR/samples.jsonl --out DIR2     # re-analyse

SPEC is any reward name ``tether.rewards.resolve`` knows: a built-in (``length_proxy``,
``length_penalized_gold``, ...), ``reward_model:PATH``, or ``package.module:function``.

Method (Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization", Sec. 2-3).
Best-of-n (BoN) sampling draws n completions and keeps the one the proxy scores highest; larger
n optimises the proxy harder, at an analytic KL from the policy (Stiennon et al. 2020, App. G.3):

    KL_bon(n) = log n - (n - 1) / n,        d = sqrt(KL_bon)

For each prompt, N = max_n completions are sampled once (seeded). For every n <= N the expected
gold (and proxy) score of the BoN choice is estimated with the unbiased estimator over all
size-n subsets of the N samples (Nakano et al. 2021, App. I), not from one random draw: with the
samples sorted by proxy, rank i = 1..N ascending,

    E[g(BoN_n)] = sum_i  C(i-1, n-1) / C(N, n) * g_(i)

(the i-th ranked sample is the best of a subset exactly when the other n-1 members rank below
it). Proxy ties are broken at random, which in expectation gives each tied sample the mean gold
of its tie group. Averaged over prompts, this traces gold and proxy against d. The gold gain
over n = 1 is fitted by least squares to Gao et al.'s BoN form (linear in alpha, beta):

    gold(d) - gold(0) = d * (alpha - beta * d)        peak at d* = alpha / (2 beta)

and d* is turned back into n by inverting KL_bon. The measured overoptimization point is the n
with the highest expected gold, when a larger n then scores lower on gold and higher on proxy.

Outputs in --out: ``overoptimization.json`` (the sweep, the fit, both points), a plot
``overoptimization.png`` (proxy and gold against sqrt(KL), fitted curve, peak) and, when it
sampled, ``samples.jsonl`` (every completion with both scores).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.errors import ConfigError, DataValidationError

REPORT_FILE = "overoptimization.json"
PLOT_FILE = "overoptimization.png"
SAMPLES_FILE = "samples.jsonl"


# ---- the math -------------------------------------------------------------------------------

def kl_best_of_n(n: float) -> float:
    """KL(BoN_n || policy) = log n - (n - 1)/n, in nats (an upper bound that is tight for
    continuous rewards)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def n_for_kl(kl: float) -> float:
    """The (real) n with ``kl_best_of_n(n) == kl`` (inf beyond float range); KL_bon rises
    monotonically with n. Solved for L = log n in KL = L - 1 + exp(-L)."""
    if kl <= 0:
        return 1.0

    def kl_of_log_n(log_n: float) -> float:
        return log_n - 1 + math.exp(-log_n)

    low, high = 0.0, kl + 1.0  # kl_of_log_n(kl + 1) > kl
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if kl_of_log_n(middle) < kl else (low, middle)
    log_n = (low + high) / 2
    return math.exp(log_n) if log_n < 700 else math.inf


def sweep_sizes(max_n: int) -> list[int]:
    """1, 2, 4, ... up to max_n (and max_n itself when it is not a power of two)."""
    sizes = [1 << k for k in range(max_n.bit_length()) if 1 << k <= max_n]
    return sizes if sizes[-1] == max_n else sizes + [max_n]


def best_of_n_weights(num_samples: int, n: int) -> np.ndarray:
    """w_i = C(i-1, n-1) / C(N, n): the chance that the i-th lowest of N samples is the best of
    a uniformly random size-n subset. Sums to 1. Shape: (N,)."""
    if not 1 <= n <= num_samples:
        raise ValueError(f"n must be in [1, {num_samples}], got {n}")
    ranks = np.arange(1, num_samples + 1)
    weights = np.zeros(num_samples)
    valid = ranks >= n
    log_c = (_log_comb(ranks[valid] - 1, n - 1) - _log_comb(num_samples, n))
    weights[valid] = np.exp(log_c)
    return weights


def _log_comb(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    lgamma = np.vectorize(math.lgamma)
    return lgamma(a + 1) - lgamma(b + 1) - lgamma(a - b + 1)


def best_of_n_expectation(proxy: Sequence[float], gold: Sequence[float], n: int) -> tuple[float, float]:
    """Unbiased estimates of E[proxy(BoN_n)] and E[gold(BoN_n)] from one prompt's N samples.

    Shape: proxy, gold: (N,) scores of the same samples.
    """
    proxy, gold = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    if proxy.shape != gold.shape or proxy.ndim != 1:
        raise ValueError(f"proxy and gold must be (N,) arrays of one shape, got {proxy.shape}, {gold.shape}")
    order = np.argsort(proxy, kind="stable")
    proxy_sorted, gold_sorted = proxy[order], gold[order]
    # A random tie-break gives each of the tied samples the same chance: use their mean gold.
    _, group, counts = np.unique(proxy_sorted, return_inverse=True, return_counts=True)
    gold_sorted = np.bincount(group, weights=gold_sorted) / counts
    gold_sorted = gold_sorted[group]
    weights = best_of_n_weights(len(proxy), n)  # (N,)
    return float(weights @ proxy_sorted), float(weights @ gold_sorted)


def best_of_n_sweep(proxy: Sequence[Sequence[float]], gold: Sequence[Sequence[float]],
                    sizes: Sequence[int]) -> list[dict[str, float]]:
    """Expected proxy and gold of BoN_n, averaged over prompts, for each n in ``sizes``.

    Shape: proxy, gold: (P, N) scores, P prompts with N samples each (N >= max(sizes)).
    Returns one row per n: n, kl, sqrt_kl, proxy, gold.
    """
    if not proxy or len(proxy) != len(gold):
        raise ValueError("need the same (non-zero) number of prompts for proxy and gold")
    fewest = min(len(p) for p in proxy)
    if max(sizes) > fewest:
        raise ValueError(f"n up to {max(sizes)} needs that many samples per prompt; one prompt has {fewest}")
    rows = []
    for n in sizes:
        estimates = np.array([best_of_n_expectation(p, g, n) for p, g in zip(proxy, gold)])  # (P, 2)
        kl = kl_best_of_n(n)
        rows.append({"n": n, "kl": kl, "sqrt_kl": math.sqrt(kl),
                     "proxy": float(estimates[:, 0].mean()), "gold": float(estimates[:, 1].mean())})
    return rows


def fit_bon_gold(sqrt_kl: Sequence[float], gold_gain: Sequence[float]) -> dict[str, float | None]:
    """Least-squares fit of ``gold_gain = d * (alpha - beta * d)`` (Gao et al. 2022, Eq. 1).

    The form is linear in (alpha, beta): columns [d, -d^2]. Returns alpha, beta, r_squared, and
    the peak (d* = alpha / 2 beta, KL* = d*^2, n*) when beta > 0 and alpha > 0 (a maximum at d > 0);
    otherwise the peak fields are None (the gold has not turned down within the fit). n* is None
    when it is beyond float range.
    """
    d = np.asarray(sqrt_kl, dtype=float)
    y = np.asarray(gold_gain, dtype=float)
    design = np.stack([d, -d ** 2], axis=1)  # (K, 2)
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ np.array([alpha, beta])
    total = float(((y - y.mean()) ** 2).sum())
    fit = {"alpha": float(alpha), "beta": float(beta),
           "r_squared": 1 - float((residual ** 2).sum()) / total if total > 0 else None,
           "peak_sqrt_kl": None, "peak_kl": None, "peak_n": None}
    if alpha > 0 and beta > 1e-9 * alpha:  # (a beta at rounding level is a straight line)
        peak = alpha / (2 * beta)
        n = n_for_kl(peak ** 2)
        fit.update(peak_sqrt_kl=float(peak), peak_kl=float(peak ** 2), peak_n=n if math.isfinite(n) else None)
    return fit


def overoptimization_point(rows: Sequence[dict[str, float]]) -> int | None:
    """The n after which gold falls while proxy keeps rising; None when gold peaks at the end.

    The n of highest expected gold (the smallest such n on a tie), provided the largest n scores
    lower on gold and higher on proxy than it.
    """
    best = max(range(len(rows)), key=lambda k: (rows[k]["gold"], -k))
    last = rows[-1]
    if best == len(rows) - 1 or not (last["gold"] < rows[best]["gold"] and last["proxy"] > rows[best]["proxy"]):
        return None
    return int(rows[best]["n"])


def analyse(proxy: Sequence[Sequence[float]], gold: Sequence[Sequence[float]], max_n: int) -> dict[str, Any]:
    """The whole audit on scored samples: sweep, Gao fit, measured and fitted peaks."""
    rows = best_of_n_sweep(proxy, gold, sweep_sizes(max_n))
    baseline = rows[0]["gold"]
    fit = fit_bon_gold([r["sqrt_kl"] for r in rows], [r["gold"] - baseline for r in rows])
    point = overoptimization_point(rows)
    peak = max(rows, key=lambda r: r["gold"])
    return {
        "prompts": len(proxy), "samples_per_prompt": min(len(p) for p in proxy), "max_n": max_n,
        "sweep": rows, "gao_fit": fit,
        "measured_gold_peak_n": int(peak["n"]), "overoptimization_n": point,
        "overoptimization_kl": kl_best_of_n(point) if point else None,
        "gold_at_peak": peak["gold"], "gold_at_max_n": rows[-1]["gold"],
        "proxy_at_peak": peak["proxy"], "proxy_at_max_n": rows[-1]["proxy"],
    }


# ---- plot ---------------------------------------------------------------------------------------

def plot_sweep(report: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Proxy (left axis) and gold (right axis) against sqrt(KL_bon), the fitted gold curve, and the
    measured overoptimization point; the top axis names n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["sweep"]
    d = [r["sqrt_kl"] for r in rows]
    figure, proxy_axis = plt.subplots(figsize=(7, 4.2))
    gold_axis = proxy_axis.twinx()
    proxy_axis.plot(d, [r["proxy"] for r in rows], "o-", color="tab:blue", label="proxy (BoN choice)")
    gold_axis.plot(d, [r["gold"] for r in rows], "s-", color="tab:red", label="gold (BoN choice)")
    fit = report["gao_fit"]
    dense = np.linspace(0, max(d), 100)
    gold_axis.plot(dense, rows[0]["gold"] + dense * (fit["alpha"] - fit["beta"] * dense), "--",
                   color="tab:red", alpha=0.6, label=f"fit d(α-βd): α={fit['alpha']:.3g}, β={fit['beta']:.3g}")
    if report["overoptimization_n"]:
        x = math.sqrt(report["overoptimization_kl"])
        gold_axis.axvline(x, color="gray", linestyle=":", label=f"gold peak, n={report['overoptimization_n']}")
    proxy_axis.set_xlabel("sqrt(KL_bon) = sqrt(log n - (n-1)/n)")
    proxy_axis.set_ylabel("proxy reward", color="tab:blue")
    gold_axis.set_ylabel("gold reward", color="tab:red")
    top = proxy_axis.secondary_xaxis("top")
    top.set_xticks(d, [str(r["n"]) for r in rows], fontsize=7)
    top.set_xlabel("n")
    handles = proxy_axis.get_legend_handles_labels()[0] + gold_axis.get_legend_handles_labels()[0]
    proxy_axis.legend(handles=handles, fontsize=7, loc="lower center")
    proxy_axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


# ---- sampling and scoring --------------------------------------------------------------------

def read_prompts(path: str, limit: int | None = None) -> tuple[list[Any], dict[str, list]]:
    """Prompts of a prompt file (the data kind ``prompt``: a string or a list of messages), and the
    other columns, passed to the rewards. Raises DataValidationError naming each bad line."""
    from tether.data import load_records
    from tether.rewards.base import reward_columns

    records = load_records(path, "prompt")[:limit or None]
    return [r.prompt for r in records], reward_columns(records)


def score(fn: Callable, name: str, prompts: list, texts: list[str], columns: dict[str, list]) -> list[float]:
    """One reward over all samples; every sample must get a number (None is an error here)."""
    from tether.rewards.base import RewardSpec, combine_rewards

    _, per_reward, _ = combine_rewards([RewardSpec(name, fn)], prompts, texts, columns)
    values = per_reward[name]
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise ConfigError(f"{name} reward returned None for {len(missing)} samples (first: sample "
                          f"{missing[0]}); the audit needs a score for every completion")
    return values


def sample_completions(policy: str, prompts: list, num_samples: int, *, max_new_tokens: int,
                       temperature: float, seed: int, rows_per_batch: int = 256,
                       progress: bool = True) -> list[list[str]]:
    """``num_samples`` completions per prompt from ``policy``, seeded. Shape: (P, N) texts."""
    import torch

    from tether.engine.progress import progress_bar
    from tether.models import load_model
    from tether.rollout.sampler import RolloutConfig, TransformersSampler

    model, tokenizer = load_model(policy)
    sampler = TransformersSampler(model, tokenizer)
    per_call = max(1, rows_per_batch // num_samples)  # prompts decoded together
    texts: list[list[str]] = []
    with torch.no_grad(), progress_bar("best-of-n samples", len(prompts), enabled=progress) as bar:
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start:start + per_call]
            batch = sampler.sample(chunk, RolloutConfig(
                num_samples=num_samples, temperature=temperature, max_new_tokens=max_new_tokens,
                seed=seed + start))
            texts += [batch.texts[i * num_samples:(i + 1) * num_samples] for i in range(len(chunk))]
            bar.advance(len(chunk))
    return texts


def read_samples(path: str) -> tuple[list, list[list[str]], list[list[float]], list[list[float]]]:
    """A ``samples.jsonl`` written by this audit: prompts, texts, proxy and gold, grouped per prompt."""
    from tether.data import read_rows

    grouped: dict[int, dict] = {}
    for location, row, problem in read_rows(path):
        if problem is not None:
            raise problem
        missing = [k for k in ("prompt_index", "prompt", "text", "proxy", "gold") if k not in row]
        if missing:
            raise DataValidationError("missing required field", file=location.file, line=location.line,
                                      field=missing[0])
        group = grouped.setdefault(row["prompt_index"], {"prompt": row["prompt"], "texts": [], "proxy": [], "gold": []})
        group["texts"].append(row["text"])
        group["proxy"].append(float(row["proxy"]))
        group["gold"].append(float(row["gold"]))
    groups = [grouped[k] for k in sorted(grouped)]
    return ([g["prompt"] for g in groups], [g["texts"] for g in groups],
            [g["proxy"] for g in groups], [g["gold"] for g in groups])


# ---- command line -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether audit overoptimization", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Best-of-n sweep: where optimising a proxy reward stops improving a gold reward "
                    "(Gao et al. 2022).")
    parser.add_argument("--policy", help="model to sample from (a local checkpoint or 'default')")
    parser.add_argument("--prompts", help="JSONL with a 'prompt' per line (other columns go to the rewards)")
    parser.add_argument("--proxy", help="reward spec being optimised (e.g. length_proxy, reward_model:PATH)")
    parser.add_argument("--gold", help="reward spec trusted as the truth (e.g. length_penalized_gold)")
    parser.add_argument("--samples", help="re-analyse a samples.jsonl from an earlier run instead of sampling "
                                          "(rescored when --proxy/--gold are given)")
    parser.add_argument("--max-n", type=int, default=256, help="samples per prompt = largest n (default 256)")
    parser.add_argument("--limit", type=int, help="use only the first K prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-on-overoptimization", action="store_true",
                        help="exit 1 when gold falls past some n while proxy keeps rising")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True, help="folder for the report, plot and samples")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from tether.engine.progress import console
    from tether.rewards.resolve import resolve_reward

    if args.max_n < 2:
        raise ConfigError(f"--max-n must be at least 2, got {args.max_n}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.samples:
        prompts, texts, proxy, gold = read_samples(args.samples)
        if args.proxy or args.gold:
            if not (args.proxy and args.gold):
                raise ConfigError("to rescore samples give both --proxy and --gold")
            flat_prompts = [p for p, t in zip(prompts, texts) for _ in t]
            flat = [x for t in texts for x in t]
            proxy_flat = score(resolve_reward(args.proxy), "proxy", flat_prompts, flat, {})
            gold_flat = score(resolve_reward(args.gold), "gold", flat_prompts, flat, {})
            proxy, gold = _regroup(proxy_flat, texts), _regroup(gold_flat, texts)
        max_n = min(args.max_n, min(len(t) for t in texts))
    else:
        missing = [flag for flag, value in (("--policy", args.policy), ("--prompts", args.prompts),
                                            ("--proxy", args.proxy), ("--gold", args.gold)) if not value]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (or pass --samples FILE)")
        proxy_fn, gold_fn = resolve_reward(args.proxy), resolve_reward(args.gold)
        prompts, columns = read_prompts(args.prompts, args.limit)
        max_n = args.max_n
        console.print(f"sampling {len(prompts)} prompts x {max_n} completions x {args.max_new_tokens} tokens "
                      f"from {args.policy}")
        texts = sample_completions(args.policy, prompts, max_n, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature, seed=args.seed, progress=not args.no_progress)
        flat_prompts = [p for p in prompts for _ in range(max_n)]
        flat = [x for t in texts for x in t]
        flat_columns = {key: [v for v in values for _ in range(max_n)] for key, values in columns.items()}
        proxy = _regroup(score(proxy_fn, "proxy", flat_prompts, flat, flat_columns), texts)
        gold = _regroup(score(gold_fn, "gold", flat_prompts, flat, flat_columns), texts)
        with (out / SAMPLES_FILE).open("w", encoding="utf-8") as handle:
            for i, prompt in enumerate(prompts):
                for j, text in enumerate(texts[i]):
                    handle.write(json.dumps({"prompt_index": i, "sample_index": j, "prompt": prompt,
                                             "text": text, "proxy": proxy[i][j], "gold": gold[i][j]}) + "\n")

    report = analyse(proxy, gold, max_n)
    report.update(policy=args.policy, proxy_reward=args.proxy, gold_reward=args.gold,
                  samples=args.samples, max_new_tokens=None if args.samples else args.max_new_tokens,
                  temperature=args.temperature, seed=args.seed,
                  seconds=round(time.perf_counter() - started, 1))
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    plot_sweep(report, out / PLOT_FILE, title=f"best-of-n: {args.proxy or 'proxy'} vs {args.gold or 'gold'}")
    _print_summary(report, console)
    console.print(f"report: {out / REPORT_FILE}; plot: {out / PLOT_FILE}")
    return 1 if args.fail_on_overoptimization and report["overoptimization_n"] else 0


def _regroup(flat: list[float], like: list[list[str]]) -> list[list[float]]:
    grouped, start = [], 0
    for texts in like:
        grouped.append(flat[start:start + len(texts)])
        start += len(texts)
    return grouped


def _print_summary(report: dict[str, Any], console) -> None:
    from rich.table import Table

    table = Table(title="best-of-n sweep (expected score of the proxy's choice)")
    for column in ("n", "KL", "sqrt KL", "proxy", "gold"):
        table.add_column(column, justify="right")
    for row in report["sweep"]:
        table.add_row(str(row["n"]), f"{row['kl']:.3f}", f"{row['sqrt_kl']:.3f}",
                      f"{row['proxy']:.3f}", f"{row['gold']:.3f}")
    console.print(table)
    fit = report["gao_fit"]
    peak = (f"fitted gold peak at sqrt(KL)={fit['peak_sqrt_kl']:.3f}, n~{fit['peak_n']:.1f}"
            if fit["peak_n"] else "fit has no gold peak (beta <= 0)")
    console.print(f"Gao fit gold(d) = d(alpha - beta d): alpha={fit['alpha']:.4g}, beta={fit['beta']:.4g}; {peak}")
    if report["overoptimization_n"]:
        console.print(f"[bold red]overoptimization:[/] gold peaks at n={report['overoptimization_n']} "
                      f"({report['gold_at_peak']:.3f}) and falls to {report['gold_at_max_n']:.3f} at "
                      f"n={report['max_n']} while proxy rises {report['proxy_at_peak']:.3f} -> "
                      f"{report['proxy_at_max_n']:.3f}")
    else:
        console.print("no overoptimization within this sweep: gold is highest at the largest n")
