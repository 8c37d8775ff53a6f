"""A cohort model of how an agent's metrics move together, measured on ASD before it is
built into the detector (issue 12, Deliver 1): does it raise the runtime decisions' event
recall at <= 1 false decision per 1,000 normal points?

    .venv/bin/python bench/asd_cohort.py ../shared/data/ASD --cache var/asd_cohort.npz --view none
    .venv/bin/python bench/asd_cohort.py ../shared/data/ASD --cache var/asd_cohort.npz \\
        --view maha --online 2880 --trigger 8 --trigger-quiet-s 3600 --combine trigger-only \\
        --out bench/results/asd_cohort.json
    .venv/bin/python bench/asd_cohort.py ../shared/data/ASD --cache var/asd_cohort.npz \\
        --ceiling --out bench/results/asd_cohort_ceiling.json

(the first, without a cache, runs the detector over every server; the figures of each
command are in docs/detection.md, "A cohort view of metrics moving together").

Two stages, so the variants cost seconds, not a detector run each:

1. **Per-point outputs of the fleet-wired detector** (wired and fed as
   ``bench/multivariate.py`` does: one detector over a server's 19 metrics, the history
   then the test points, each judged before it is learned): each point's weighted
   deviations from the local level (``zw``) and from the slow baseline, the furthest
   metric's calibrated surprise (recovered from the recent surprise the detector keeps),
   new extremes, warm-up. Cached in ``--cache`` (a ~1 min run on a quiet machine).
2. **The cohort view, replayed offline.** A *cohort model* (one per tenant + agent kind in
   the fleet; on ASD each server is one agent, so its own cohort) is fitted on the
   already-normalised deviations of the first half of the history after warm-up (clipped
   at ``--clip`` std): their mean and covariance. Each point's multivariate score is
   either the residual off the cohort's principal subspace (``spe``: components keeping
   ``--variance`` of the variance), a shrunk Mahalanobis distance (``maha``), or the
   larger chance of both (``both``: T² in the subspace and the residual, Bonferroni).
   Its chance is **learned empirically** on the second half of the history (the share of
   those points scoring higher; beyond their top ``TAIL_SHARE``, an exponential tail with
   their mean excess), not assumed chi-square. The heartbeat's surprise becomes
   ``-ln min(1, 2 · min(p_furthest, p_cohort))`` and goes through the detector's own
   second and third steps (recent surprise, anomaly likelihood, score, threshold, quiet
   period about the metrics named), replayed here exactly as :func:`agentwatch.detector.judge`
   and :func:`agentwatch.detector.learn_judged` do them. ``--view none`` replays the
   detector unchanged (its decisions must equal the detector's: the check of the replay).
   ``--online N`` learns the chance instead over the last N ordinary points (a streaming
   cohort keeps learning); ``--trigger c --combine trigger-only`` leaves the surprise alone
   and fires on the cohort view by itself when ``-ln p_cohort >= c``, with a quiet period
   of its own (``--trigger-quiet-s``, renewed while it holds); ``--sustain K`` lets it fire
   only once the cohort chance has stayed below the trigger's for K points in a row.

``--ceiling`` prints instead what raw scores (PCA, 1-NN, the cohort's) could find at
<= 1 false start per 1,000 normal points with an oracle threshold picked on the test labels:
an upper bound for any runtime rule built on them.

Honest selection: ``--servers`` picks the set; variants were chosen on omi-1 … omi-6 and
confirmed on omi-7 … omi-12 (docs/detection.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import erfc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from multivariate import (  # noqa: E402
    STEP_S,
    auprc,
    best_f1,
    detector_for,
    load_servers,
    runtime_figures,
)

from agentwatch.detector import SCORE_DECADES  # noqa: E402
from agentwatch.settings import Settings  # noqa: E402

#: Quantiles of each server's test scores tried as the oracle threshold of :func:`ceiling`.
CEILING_QUANTILES = np.linspace(0.90, 0.99995, 120)
#: The calibration points' top share beyond which the cohort score's tail is exponential.
TAIL_SHARE = 0.01


# --- stage 1: the detector's per-point outputs ---------------------------------------------


def detector_outputs(server, settings: Settings) -> dict[str, np.ndarray]:
    """Per point of history + test: weighted deviations from the level and the slow
    baseline, the furthest metric's surprise, new extremes, warm and the detector's own
    decision (for the replay's check)."""
    detector = detector_for(server.metrics, server.train, settings)
    p = detector._params
    rows = np.vstack([server.train, server.test])
    n, features = rows.shape
    out = {
        "zw": np.zeros((n, features)),
        "zb": np.zeros((n, features)),
        "surprise": np.zeros(n),
        "extreme": np.zeros((n, features), dtype=bool),
        "judged": np.zeros(n, dtype=bool),
        "fire": np.zeros(n, dtype=bool),
        "score": np.zeros(n),
    }
    for i, row in enumerate(rows):
        point = dict(zip(server.metrics, row.tolist(), strict=True))
        j = detector.judge_one(point, i * STEP_S)
        b = j.before
        first = b.count[0] <= p.warmup // 2
        avg = float(b.surprise_avg[0])
        recent = float(j.recent[0])
        out["surprise"][i] = recent if first else avg + (recent - avg) / p.surprise_weight
        out["zw"][i] = j.weighted[0]
        out["zb"][i] = (row - b.mean[0]) / j.base_std[0]
        out["extreme"][i] = j.extreme[0]
        out["judged"][i] = bool(j.judged[0])
        out["fire"][i] = bool(j.fire[0])
        out["score"][i] = float(j.scores[0])
        detector.learn_one(point, i * STEP_S)
    return out


# --- stage 2: the cohort view ---------------------------------------------------------------


def fit_cohort(x: np.ndarray, view: str, variance: float, shrink: float) -> dict:
    """The cohort's model of deviations ``x`` (points × metrics): mean, covariance, its
    principal subspace."""
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    diag = np.diag(np.diag(cov)) + 1e-6 * np.eye(len(mean))
    cov = (1.0 - shrink) * cov + shrink * diag
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    explained = np.cumsum(vals) / vals.sum()
    k = int(np.searchsorted(explained, variance) + 1)
    return {"mean": mean, "inv": np.linalg.inv(cov), "basis": vecs[:, :k], "vals": vals[:k],
            "k": k, "view": view}  # fmt: skip


def cohort_scores(model: dict, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per point: the model's raw scores (one or two) and each metric's share of blame."""
    c = x - model["mean"]
    if model["view"] == "maha":
        m = c @ model["inv"]
        return (np.einsum("ij,ij->i", m, c),), m * c
    proj = c @ model["basis"]
    resid = c - proj @ model["basis"].T
    spe = np.sum(resid**2, axis=1)
    if model["view"] == "spe":
        return (spe,), resid**2
    t2 = np.sum(proj**2 / model["vals"], axis=1)
    return (spe, t2), resid**2 + (proj / np.sqrt(model["vals"])) @ model["basis"].T ** 2


def empirical_tail(calibration: np.ndarray):
    """The chance of a score at least x, learned on ``calibration`` scores: their share
    above x, and beyond their top ``TAIL_SHARE`` an exponential tail with their mean
    excess (peaks over threshold, as the detector's per-metric tails)."""
    ordered = np.sort(calibration)
    m = len(ordered)
    u = float(np.quantile(ordered, 1.0 - TAIL_SHARE))
    excess = float(np.mean(ordered[ordered > u] - u)) if (ordered > u).any() else 1.0
    excess = max(excess, 1e-9)

    def chance(x: np.ndarray) -> np.ndarray:
        share = (m - np.searchsorted(ordered, x, side="left") + 1) / (m + 1)
        tail = TAIL_SHARE * np.exp(-(x - u) / excess)
        return np.where(x > u, np.minimum(share, tail), share)

    return chance


def online_chances(raw: np.ndarray, start: int, window: int, ordinary: np.ndarray) -> np.ndarray:
    """The chance of each point's score ``raw[i]`` (i >= ``start``), learned from the
    last ``window`` earlier ``ordinary`` points' scores only (a streaming cohort keeps
    learning its tail; no point teaches the tail that judges it): their share at or
    above it, and beyond their top ``TAIL_SHARE`` an exponential tail with their mean
    excess. 1 before ``start``."""
    from bisect import insort
    from collections import deque

    out = np.ones(len(raw))
    history = deque(raw[max(0, start - window) : start][ordinary[max(0, start - window) : start]])
    ordered = sorted(history)
    for i in range(start, len(raw)):
        m = len(ordered)
        x = raw[i]
        top = max(int(TAIL_SHARE * m), 1)
        u = ordered[m - top - 1]
        excess = max(float(np.mean(ordered[m - top :])) - u, 1e-9)
        share = (m - np.searchsorted(ordered, x, side="left") + 1) / (m + 1)
        out[i] = min(share, TAIL_SHARE * np.exp(-(x - u) / excess)) if x > u else share
        if ordinary[i]:
            insort(ordered, x)
            history.append(x)
            if len(history) > window:
                old = history.popleft()
                del ordered[np.searchsorted(ordered, old, side="left")]
    return out


def replay(
    surprise: np.ndarray,
    extreme: np.ndarray,
    zw: np.ndarray,
    judged: np.ndarray,
    blame: np.ndarray | None,
    p,
    blame_share: float,
    trigger: np.ndarray | None = None,
    trigger_quiet_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The detector's steps 2–3 over a surprise sequence (scores, decisions), as
    ``judge``/``learn_judged`` do them (float64 throughout)."""
    n, features = zw.shape
    scores, fire_out = np.zeros(n), np.zeros(n, dtype=bool)
    avg = mean = var = 0.0
    quiet_until, quiet_mask = 0.0, np.zeros(features, dtype=bool)
    cohort_quiet_until = 0.0
    ext_rows = extreme.any(axis=1)
    a = np.abs(zw)
    for i in range(n):
        count = i
        first = count <= p.warmup // 2
        s = surprise[i]
        recent = s if first else avg + p.surprise_weight * (s - avg)
        lstd = max(np.sqrt(var), p.likelihood_std_floor)
        lik = (recent - mean) / lstd
        if judged[i]:
            tail = max(0.5 * float(erfc(lik / np.sqrt(2.0))), 1e-300)
            score = 1.0 if ext_rows[i] else min(1.0, -np.log10(tail) / SCORE_DECADES)
        else:
            score = 0.0
        t = i * STEP_S
        fire = score >= p.threshold
        cohort_fire = False
        if trigger is not None and trigger[i] and judged[i] and not fire:
            # the cohort's own trigger, with its own quiet period (trigger_quiet_s): a
            # point whose cohort chance alone is below the trigger's fires
            if t >= cohort_quiet_until and (trigger_quiet_s > 0 or t >= quiet_until):
                cohort_fire = True
            cohort_quiet_until = t + trigger_quiet_s
        if fire:
            named = (a[i] >= p.reason_sigma) | extreme[i] | (a[i] == a[i].max())
            if blame is not None:
                named |= blame[i] >= blame_share * blame[i].sum()
            quiet = t < quiet_until
            if quiet:
                breaking = ((a[i] >= p.quiet_break_sigma) | extreme[i]) & ~quiet_mask
                if blame is not None:
                    breaking |= (blame[i] >= blame_share * blame[i].sum()) & ~quiet_mask
                fire = bool(breaking.any())
            if fire:
                quiet_mask = (quiet_mask | named) if quiet else named
                quiet_until = t + p.quiet_s
        scores[i], fire_out[i] = score, fire or cohort_fire
        seen = count - p.warmup // 2 + 1
        delta = recent - mean
        if judged[i]:
            delta = min(delta, p.clip_sigma * lstd)
        share = 1.0 / min(max(seen, 0) + p.warmup, p.memory)
        avg = recent
        if seen <= 0:
            mean, var = 1.0, p.likelihood_prior_std**2
        else:
            mean, var = mean + share * delta, (1.0 - share) * (var + share * delta * delta)
    return scores, fire_out


def run_variant(servers, outputs, settings: Settings, args) -> dict:
    """One variant over the servers: runtime figures summed, best F1 / AUPRC averaged."""
    found = events = false = normal = 0
    f1s, aps, per = [], [], {}
    for server in servers:
        o = outputs[server.name]
        p = detector_for(server.metrics, server.train, settings)._params
        n_train = len(server.train)
        surprise = o["surprise"].copy()
        blame = None
        if args.view != "none":
            x = np.clip(o["zb" if args.deviation == "baseline" else "zw"], -args.clip, args.clip)
            usable = np.flatnonzero(o["judged"][:n_train])
            half = usable[: len(usable) // 2]
            calib = usable[len(usable) // 2 :]
            model = fit_cohort(x[half], args.view, args.variance, args.shrink)
            raw, blame = cohort_scores(model, x)
            if args.online:
                ordinary = o["judged"] & ~o["fire"]
                chances = [online_chances(r, calib[0], args.online, ordinary) for r in raw]
            else:
                chances = [empirical_tail(r[calib])(r) for r in raw]
            p_mv = np.minimum(1.0, len(chances) * np.minimum.reduce(chances))
            p_mv[: calib[0]] = 1.0  # the model is not there before its calibration
            p_furthest = np.exp(-surprise)
            p_comb = np.minimum(1.0, 2.0 * np.minimum(p_furthest, p_mv))
            surprise = np.maximum(-np.log(np.maximum(p_comb, 1e-300)), 0.0)
        trigger = None
        if args.view != "none" and args.trigger:
            trigger = -np.log(np.maximum(p_mv, 1e-300)) >= args.trigger
            if args.sustain > 1:
                # only a break that has held for ``sustain`` points in a row
                held = np.convolve(trigger.astype(float), np.ones(args.sustain))[: len(trigger)]
                trigger = held >= args.sustain
        if args.combine == "trigger-only" and args.view != "none":
            surprise = o["surprise"]
        scores, fire = replay(surprise, o["extreme"], o["zw"], o["judged"], blame, p,
                              args.blame_share, trigger, args.trigger_quiet_s)  # fmt: skip
        test = slice(n_train, None)
        if args.view == "none":
            same = int((fire == o["fire"]).sum())
            if same != len(fire):
                print(f"{server.name}: replay differs from the detector on "
                      f"{len(fire) - same} points", file=sys.stderr)  # fmt: skip
        r = runtime_figures(fire[test], server.labels)
        found += r["events_detected"]
        events += r["events"]
        false += r["false_decisions"]
        normal += r["normal_points"]
        rank = scores[test] + 1e-6 * o["extreme"][test].any(axis=1)
        f1s.append(best_f1(rank, server.labels)[0])
        aps.append(auprc(rank, server.labels))
        per[server.name] = {"found": r["events_detected"], "events": r["events"],
                            "false": r["false_decisions"], "best_f1": f1s[-1]}  # fmt: skip
    return {
        "events_found": found,
        "events": events,
        "event_recall": found / events,
        "false_per_1k_normal": 1000.0 * false / normal,
        "best_f1": float(np.mean(f1s)),
        "auprc": float(np.mean(aps)),
        "per_server": per,
    }


def ceiling(servers, outputs, args) -> dict:
    """How many labelled segments a raw score *could* find at <= 1 false start per 1,000
    normal points, with a threshold chosen on the test labels themselves (an oracle:
    the same quantile of each server's test scores, the best of ``CEILING_QUANTILES``;
    flagged points within ``MERGE_POINTS`` count as one start, as in
    ``bench/asd_misses.py``). An upper bound for any runtime rule built on that score."""
    from asd_misses import starts
    from multivariate import nearest_neighbour_method, pca_method, segments

    raw_scores: dict[str, dict[str, np.ndarray]] = {"PCA (90 % variance)": {}, "1-NN": {}}
    for view in ("spe", "maha"):
        raw_scores[f"cohort {view}"] = {}
        raw_scores[f"cohort {view} or the detector's decisions"] = {}
    for server in servers:
        o, n = outputs[server.name], len(server.train)
        raw_scores["PCA (90 % variance)"][server.name] = pca_method(
            server.train, server.test, 0.9).scores  # fmt: skip
        raw_scores["1-NN"][server.name] = nearest_neighbour_method(server.train, server.test).scores
        x = np.clip(o["zw"], -args.clip, args.clip)
        usable = np.flatnonzero(o["judged"][:n])
        for view in ("spe", "maha"):
            model = fit_cohort(x[usable[: len(usable) // 2]], view, args.variance, args.shrink)
            raw_scores[f"cohort {view}"][server.name] = cohort_scores(model, x)[0][0][n:]
            raw_scores[f"cohort {view} or the detector's decisions"][server.name] = (
                cohort_scores(model, x)[0][0][n:], o["fire"][n:])  # fmt: skip
    out = {}
    for method, by_server in raw_scores.items():
        best = None
        for q in CEILING_QUANTILES:
            found = events = false = normal = 0
            for server in servers:
                entry = by_server[server.name]
                score, fired = entry if isinstance(entry, tuple) else (entry, None)
                flagged = score >= np.quantile(score, q)
                if fired is not None:
                    flagged |= fired
                first = starts(flagged)
                for a, b in segments(server.labels):
                    events += 1
                    found += bool(flagged[a : b + 1].any())
                false += int((first & ~server.labels).sum())
                normal += int((~server.labels).sum())
            per_1k = 1000.0 * false / normal
            if per_1k <= 1.0 and (best is None or found > best["events_found"]):
                best = {"quantile": float(q), "events_found": found, "events": events,
                        "false_starts_per_1k_normal": per_1k}  # fmt: skip
        out[method] = best
        print(f"{method}: {best}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--cache", type=Path, help="Per-point detector outputs (npz), reused.")
    parser.add_argument("--servers", nargs="*", help="Only these servers (folder names).")
    parser.add_argument("--view", choices=("none", "spe", "maha", "both"), default="both")
    parser.add_argument("--deviation", choices=("level", "baseline"), default="level")
    parser.add_argument("--clip", type=float, default=4.0)
    parser.add_argument("--variance", type=float, default=0.9)
    parser.add_argument("--shrink", type=float, default=0.1)
    parser.add_argument(
        "--trigger",
        type=float,
        default=0.0,
        help="Also fire outside quiet periods when -ln(cohort chance) >= this.",
    )
    parser.add_argument(
        "--trigger-quiet-s",
        type=float,
        default=0.0,
        help="The trigger's own quiet period, renewed while it holds (0: the "
        "detector's quiet period gates it).",
    )
    parser.add_argument(
        "--online",
        type=int,
        default=0,
        help="Learn the cohort score's tail online over this many past points.",
    )
    parser.add_argument(
        "--combine",
        choices=("surprise", "trigger-only"),
        default="surprise",
        help="Fold the cohort chance into the surprise, or only trigger on it.",
    )
    parser.add_argument(
        "--sustain",
        type=int,
        default=1,
        help="The trigger fires only after this many points in a row at or above it.",
    )
    parser.add_argument("--blame-share", type=float, default=0.2)
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="Print the oracle ceiling of raw scores (see ceiling()) instead.",
    )
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = Settings()
    servers = load_servers(args.data_dir)
    if args.servers:
        servers = [s for s in servers if s.name in set(args.servers)]
    outputs: dict[str, dict[str, np.ndarray]] = {}
    cached = dict(np.load(args.cache)) if args.cache and args.cache.exists() else {}
    for server in servers:
        keys = [k for k in cached if k.startswith(server.name + "/")]
        if keys:
            outputs[server.name] = {k.split("/", 1)[1]: cached[k] for k in keys}
        else:
            print(f"detector over {server.name}", file=sys.stderr, flush=True)
            outputs[server.name] = detector_outputs(server, settings)
            cached |= {f"{server.name}/{k}": v for k, v in outputs[server.name].items()}
    if args.cache:
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.cache, **cached)
    result = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.ceiling:
        result["ceiling"] = ceiling(servers, outputs, args)
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return result
    result |= run_variant(servers, outputs, settings, args)
    print(json.dumps({k: v for k, v in result.items() if k != "per_server"}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
