"""QMIX vs the baselines, same environment, same evaluation budget.

CIFAR VGG-16 (width 0.5) trained on the bundled digits; targets 0.2 and 0.1 of the MACs;
each method's best plan is scored on val (its reward) and on test, both after the same BN
recalibration and before any fine-tuning.

    python benchmarks/search.py [--quick] [--budget 200] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from qmixprune.demo import digits_teacher
from qmixprune.pruning import apply_plan, plan_for_counts
from qmixprune.search import EnvConfig, SearchConfig, build_env, search
from qmixprune.search.baselines import BASELINES
from qmixprune.train import evaluate, recalibrate_bn

METHODS = ["qmix", *BASELINES]


def run_method(env, method: str, budget: int, seed: int):
    env.cache, env.evaluations = {}, 0
    if method == "qmix":
        res = search(env, SearchConfig(episodes=5 * budget, max_evaluations=budget, seed=seed))
        return res.counts, res.reward, res.evaluations
    res = BASELINES[method](env, budget, seed)
    return res.counts, res.reward, res.evaluations


def test_accuracy(env, data, counts) -> float:
    pruned = apply_plan(env.model, env.graph, plan_for_counts(env.graph, counts, env.ranking))
    recalibrate_bn(pruned, env.calib, len(env.calib))
    return evaluate(pruned, data.test)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 seeds instead of 3 (~15 min)")
    p.add_argument("--budget", type=int, default=200, help="evaluations per method and seed")
    p.add_argument("--targets", default="0.2,0.1")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    seeds = [0, 1] if args.quick else [0, 1, 2]
    teacher, data = digits_teacher(0, epochs=6)
    print(f"teacher test acc {evaluate(teacher, data.test):.4f}")
    results = []
    for target in [float(t) for t in args.targets.split(",")]:
        doc = {"target": target, "budget": args.budget, "methods": {}}
        for method in args.methods.split(","):
            accs, vals, evals, secs = [], [], [], []
            for seed in seeds:
                env = build_env(teacher, data, EnvConfig(target_flops=target), seed=seed)
                t0 = time.perf_counter()
                counts, reward, n = run_method(env, method, args.budget, seed)
                secs.append(time.perf_counter() - t0)
                vals.append(reward)
                accs.append(test_accuracy(env, data, counts))
                evals.append(n)
            doc["methods"][method] = {
                "acc": accs,
                "val": vals,
                "evals": max(evals),
                "seconds": secs,
            }
            print(
                f"target {target:.2f} {method:<13} test {statistics.mean(accs):.4f} "
                f"({min(accs):.4f}-{max(accs):.4f})  val {statistics.mean(vals):.4f}  "
                f"evals {max(evals):>4}  {statistics.mean(secs):6.1f} s",
                flush=True,
            )
        results.append(doc)
    print()
    print(f"{'method':<14}" + "".join(f"  test @{d['target']:<5}" for d in results))
    for method in args.methods.split(","):
        row = "".join(f"  {statistics.mean(d['methods'][method]['acc']):>11.4f}" for d in results)
        print(f"{method:<14}{row}")
    if args.json:
        out = results[0] if len(results) == 1 else {"targets": results}
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
