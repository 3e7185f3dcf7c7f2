"""How much early stopping costs: the measurement behind ``SearchConfig.patience``'s default.

A setting that ``benchmarks/search.py`` does not report: the quick demo's teacher (VGG-16,
width 0.5, the demo recipe for its quick epochs; the search benchmark's trains the full
recipe), at 0.4 of the
MACs (it reports 0.2 and 0.1), search seeds 10, 11, 12 (it uses 0, 1, 2). Each seed runs the
full default search once without early stopping; patience only ends a run, so the run a
patience P would have made is this one cut where P evaluations passed without a better
reward. For each P: the evaluations it spends and the val reward and test accuracy (after
the same BN recalibration) of the best plan it would return, next to the full run's.

    flock /tmp/qmixprune-heavy.lock python benchmarks/patience.py [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from qmixprune.demo import QUICK_TEACHER_EPOCHS, digits_teacher
from qmixprune.files import write_bytes
from qmixprune.search import EnvConfig, SearchConfig, build_env, search
from qmixprune.train import accuracy


def trace(seed: int, target: float, episodes: int, teacher, data):
    """The environment and (reward, plan) of every distinct plan the default search scored,
    in the order it scored them."""
    env = build_env(teacher, data, EnvConfig(target_flops=target), seed=seed)
    scored: list[tuple[float, dict]] = []
    many = env.evaluator.evaluate_many

    def recording(plans):
        new = {}
        for p in plans:
            key = tuple(p[g] for g in env.groups)
            if key not in env.cache:
                new.setdefault(key, p)
        rewards = many(plans)
        scored.extend((env.cache[k], p) for k, p in new.items())
        return rewards

    env.evaluator.evaluate_many = recording
    search(env, SearchConfig(episodes=episodes, seed=seed, patience=0))
    return env, scored


def cut(scored: list[tuple[float, dict]], patience: int) -> tuple[int, float, dict]:
    """Evaluations spent, best reward and plan of the run stopped by ``patience``."""
    best, plan, at = float("-inf"), None, 0
    for n, (r, p) in enumerate(scored, 1):
        if r > best:
            best, plan, at = r, p, n
        if patience and n - at >= patience:
            return n, best, plan
    return len(scored), best, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="10,11,12")
    ap.add_argument("--target", type=float, default=0.4)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--teacher-seed", type=int, default=0)
    ap.add_argument("--teacher-epochs", type=int, default=QUICK_TEACHER_EPOCHS)
    ap.add_argument("--patience", default="20,30,40,50,60,80,100")
    ap.add_argument("--json")
    args = ap.parse_args()
    teacher, data = digits_teacher(args.teacher_seed, args.teacher_epochs)
    print(f"teacher test acc {accuracy(teacher, data.test):.4f}", flush=True)
    patiences = [0] + [int(p) for p in args.patience.split(",")]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        env, scored = trace(seed, args.target, args.episodes, teacher, data)
        tests: dict[tuple, float] = {}
        for p in patiences:
            n, best, plan = cut(scored, p)
            key = tuple(plan[g] for g in env.groups)
            if key not in tests:
                tests[key] = accuracy(env.evaluator.candidate(plan), data.test)
            rows.append(
                {"seed": seed, "patience": p, "evaluations": n, "val": best, "test": tests[key]}
            )
        print(
            f"seed {seed}: {len(scored)} evaluations, {time.perf_counter() - t0:.0f} s", flush=True
        )
        table(rows, patiences)  # after every seed: a cut-short run still says something
        if args.json:
            doc = {"args": vars(args), "rows": rows}
            write_bytes(args.json, json.dumps(doc).encode())


def table(rows: list[dict], patiences: list[int]) -> None:
    full = {r["seed"]: r for r in rows if r["patience"] == 0}
    print(f"\n{'patience':>8} {'evals':>7} {'val - full':>11} {'test - full':>12}  (mean, worst)")
    for p in patiences:
        sel = [r for r in rows if r["patience"] == p]
        dv = [r["val"] - full[r["seed"]]["val"] for r in sel]
        dt = [r["test"] - full[r["seed"]]["test"] for r in sel]
        ev = statistics.mean(r["evaluations"] for r in sel)
        print(
            f"{p or 'off':>8} {ev:7.1f} {statistics.mean(dv):+.4f} {min(dv):+.4f}"
            f" {statistics.mean(dt):+.4f} {min(dt):+.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
