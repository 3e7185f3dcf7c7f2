"""After fine-tuning, on Fashion-MNIST: the plan ``compress`` picks against the others.

Run as ``python benchmarks/search.py --data fashion-mnist --finetune [...]`` (or directly).
Per target and seed, every method's plan is fine-tuned with the same recipe
(``fmnist.finetune``) and its test accuracy reported with the compute the method spent:

  pick          compress's default: QMIX's search, then the final pick (search/pick.py)
  qmix          QMIX's best plan by its reward (the same search, no pick)
  uniform       one keep ratio for every group
  global_l1     one L1 threshold across groups
  evolutionary  (mu + lambda) evolution, same evaluation budget as QMIX
  random        random keep fractions, same evaluation budget

Writes the JSON after every fine-tuned plan; ``--resume`` keeps what it holds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmnist  # noqa: E402

from qmixprune.search import EnvConfig, SearchConfig, build_env, search  # noqa: E402
from qmixprune.search.baselines import BASELINES  # noqa: E402
from qmixprune.search.pick import PickConfig, pick  # noqa: E402

METHODS = ("pick", "qmix", "uniform", "global_l1", "evolutionary", "random")


def plans_for(teacher, data, target: float, seed: int, args) -> dict:
    """method -> (counts, compute spent: evaluations, seconds, pick steps, tau)."""
    env = build_env(teacher, data, EnvConfig(target_flops=target), seed=seed)
    out = {}
    for name in ("uniform", "global_l1", "evolutionary", "random"):
        env.evaluator.reset()
        t0 = time.perf_counter()
        res = BASELINES[name](env, args.budget, seed)
        out[name] = {
            "counts": res.counts,
            "evaluations": res.evaluations,
            "search_s": round(time.perf_counter() - t0, 1),
        }
    env.evaluator.reset()
    cfg = SearchConfig(
        episodes=20 * args.budget, max_evaluations=args.budget, patience=0, seed=seed
    )
    res = search(env, cfg)
    out["qmix"] = {
        "counts": res.counts,
        "evaluations": res.evaluations,
        "search_s": round(res.seconds, 1),
    }
    picked = pick(env, teacher, data, PickConfig(top_k=args.top_k, steps=args.pick_steps), seed)
    out["pick"] = {
        **out["qmix"],
        "counts": picked.counts,
        "pick_index": picked.index,
        "pick_steps": picked.steps,
        "pick_s": round(picked.seconds, 1),
        "tau": picked.tau,
    }
    return env, out


def table(runs: list[dict], targets, methods) -> str:
    """Markdown: test accuracy after fine-tuning, mean (min-max) over seeds, per target."""
    lines = [
        "| method | " + " | ".join(f"{t} of the MACs: test % (range), n" for t in targets) + " |",
        "|---" * (len(targets) + 1) + "|",
    ]
    for m in methods:
        cells = []
        for t in targets:
            v = [100 * r["ft_test"] for r in runs if r["method"] == m and r["target"] == t]
            cells.append(
                f"{statistics.mean(v):.2f} ({min(v):.2f}-{max(v):.2f}), {len(v)}" if v else "-"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    fmnist.add_args(p)
    p.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist"])
    p.add_argument("--finetune", action="store_true", help="(the only mode: accepted)")
    p.add_argument("--targets", default="0.2,0.1")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=40, help="evaluations per search")
    p.add_argument("--top-k", type=int, default=PickConfig.top_k)
    p.add_argument("--pick-steps", type=int, default=PickConfig.steps)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    teacher, data = fmnist.setup(args)
    from qmixprune.train import accuracy

    teacher_test = accuracy(teacher, data.test)
    print(f"teacher test {teacher_test:.4f}", flush=True)
    runs = fmnist.read_runs(args.json, args.resume)
    doc = {"args": {k: str(v) for k, v in vars(args).items()}, "teacher_test": teacher_test}
    for seed in seeds:  # seeds outermost: a cut-short run still has whole seeds
        for target in targets:
            done = {r["method"] for r in runs if r["seed"] == seed and r["target"] == target}
            if set(METHODS) <= done:
                continue
            env, found = plans_for(teacher, data, target, seed, args)
            for method in METHODS:
                if method in done:
                    continue
                info = found[method]
                student = env.evaluator.candidate(info["counts"])
                ft_val, ft_test, ft_s = fmnist.finetune(student, teacher, data, args, seed)
                runs.append(
                    {
                        "target": target,
                        "seed": seed,
                        "method": method,
                        "macs": env.cost.ratio(info["counts"]),
                        "ft_val": ft_val,
                        "ft_test": ft_test,
                        "ft_s": round(ft_s, 1),
                        **info,
                    }
                )
                print(
                    f"seed {seed} target {target} {method:<13} test {ft_test:.4f} "
                    f"val {ft_val:.4f} ({info['search_s']} s search"
                    + (f", {info['pick_s']} s pick, tau {info['tau']}" if "pick_s" in info else "")
                    + ")",
                    flush=True,
                )
                doc.update(runs=runs, provenance=fmnist.provenance())
                fmnist.write_json(args.json, doc)
    doc.update(runs=runs, provenance=fmnist.provenance())
    fmnist.write_json(args.json, doc)
    print(table(runs, targets, METHODS))


if __name__ == "__main__":
    main()
