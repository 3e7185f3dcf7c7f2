"""QMIX, its ablations and the baselines: same environment, same evaluation budget.

CIFAR VGG-16 (width 0.5) trained on the bundled digits (the benchmark teacher, see
``qmixprune.demo.digits_teacher``); each method's best plan is scored on val (its reward) and
on test, both after the same BN recalibration and before any fine-tuning. With
``--finetune-targets`` the best plans of ``--finetune-methods`` at those targets are also
distilled from the teacher for ``--finetune-epochs`` epochs (same budget for every plan).

Methods (every search gets ``--budget`` distinct evaluated plans, no early stopping):
  qmix           QMIX with its defaults (Q_tot screening of 16 candidates per evaluation)
  qmix-no-screen QMIX without screening (screen 1: every episode's plan is evaluated)
  qmix-no-elite  QMIX with elite_explore 0 (pure epsilon-greedy exploration)
  elite-only     epsilon held at 1, no screening: random moves + elite perturbation, no
                 learned policy at all (QMIX's own exploration heuristic alone; the
                 learner is not trained, since nothing would use it)
  evolutionary   (mu + lambda) evolution, mutating with QMIX's elite move
  random         random keep fractions through the same budget wall
  single_agent   AMC-style single DQN, exploring with QMIX's elite move
  uniform        one keep ratio for every group (1 evaluation)
  global_l1      one L1 threshold across groups (1 evaluation)

Writes the JSON after every finished run, so an interrupted benchmark keeps what it did.

    python benchmarks/search.py [--quick] [--budget 200] [--jobs 2] [--json F]
    python benchmarks/search.py --targets 0.2,0.1 --finetune-targets 0.1,0.05 --json F

``--data fashion-mnist --finetune`` runs ``fmnist_compare.py`` instead (the plan compress
picks against the others, after the same fine-tuning, on Fashion-MNIST).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from qmixprune.demo import digits_teacher
from qmixprune.distill import DistillConfig, distill
from qmixprune.files import write_bytes
from qmixprune.search import EnvConfig, QmixConfig, SearchConfig, build_env, search
from qmixprune.search.baselines import BASELINES
from qmixprune.train import accuracy


def _qmix(**overrides):
    def run(env, budget: int, seed: int):
        cfg = SearchConfig(
            episodes=20 * budget,  # the evaluation budget, not the episodes, ends the run
            max_evaluations=budget,
            patience=0,  # no early stopping: every method spends the whole budget
            seed=seed,
            qmix=replace(QmixConfig(), **overrides),
        )
        res = search(env, cfg)
        return res.counts, res.reward, res.evaluations

    return run


def _baseline(name: str):
    def run(env, budget: int, seed: int):
        res = BASELINES[name](env, budget, seed)
        return res.counts, res.reward, res.evaluations

    return run


METHODS = {
    "qmix": _qmix(),
    "qmix-no-screen": _qmix(screen=1),
    "qmix-no-elite": _qmix(elite_explore=0.0),
    "elite-only": _qmix(epsilon_start=1.0, epsilon_end=1.0, screen=1),
    **{name: _baseline(name) for name in BASELINES},
}
FINETUNE_METHODS = "qmix,evolutionary,uniform,global_l1"
# The methods' run times, longest first (measured in the --quick run at 3ecb5ca): tasks are
# handed out in this order, so the last ones are short and the workers finish together.
LONGEST_FIRST = [
    "qmix-no-elite",
    "qmix",
    "qmix-no-screen",
    "single_agent",
    "random",
    "evolutionary",
    "elite-only",
    "uniform",
    "global_l1",
]


def test_accuracy(env, data, counts) -> tuple[float, torch.nn.Module]:
    """Test accuracy of a plan as its reward saw it (pruned, BN recalibrated)."""
    pruned = env.evaluator.candidate(counts)
    return accuracy(pruned, data.test), pruned


@functools.cache
def _teacher():
    """The teacher and data, loaded once per worker process (read-only from then on: every
    plan is a pruned copy)."""
    return digits_teacher(0, log=lambda *a: None)


def run_task(task: dict) -> dict:
    """One method at one target and seed (a worker process when ``--jobs`` > 1)."""
    if task["threads"]:
        torch.set_num_threads(task["threads"])
    teacher, data = _teacher()
    env_cfg = EnvConfig(target_flops=task["target"], round_to=task["round_to"])
    env = build_env(teacher, data, env_cfg, seed=task["seed"])
    t0 = time.perf_counter()
    counts, reward, n = METHODS[task["method"]](env, task["budget"], task["seed"])
    seconds = time.perf_counter() - t0
    test, pruned = test_accuracy(env, data, counts)
    out = {
        "target": task["target"],
        "seed": task["seed"],
        "method": task["method"],
        "test": test,
        "val": reward,
        "evaluations": n,
        "macs": env.cost.ratio(counts),
        "seconds": round(seconds, 1),
        "counts": counts,
    }
    if task["finetune_epochs"]:
        cfg = DistillConfig(epochs=task["finetune_epochs"], seed=task["seed"])
        student, _ = distill(pruned, teacher, data, cfg)
        out["finetuned_test"] = accuracy(student, data.test)
    return out


def summary(runs: list[dict], key: str) -> dict:
    """{target: {method: (mean, min, max, n)}} of ``key`` over seeds."""
    table: dict = {}
    for r in runs:
        if key in r:
            table.setdefault(r["target"], {}).setdefault(r["method"], []).append(r[key])
    return {
        t: {m: (statistics.mean(v), min(v), max(v), len(v)) for m, v in ms.items()}
        for t, ms in table.items()
    }


def print_table(runs: list[dict], key: str, title: str, methods: list[str]) -> None:
    table = summary(runs, key)
    if not table:
        return
    targets = sorted(table, reverse=True)
    print(f"\n{title}")
    print(f"{'method':<14}" + "".join(f"  {'@ ' + str(t):<22}" for t in targets))
    for m in methods:
        cells = []
        for t in targets:
            if m in table[t]:
                mean, lo, hi, n = table[t][m]
                cells.append(f"  {mean:.4f} ({lo:.3f}-{hi:.3f}) n{n}")
            else:
                cells.append(f"  {'-':<22}")
        if any(c.strip() != "-" for c in cells):
            print(f"{m:<14}" + "".join(cells))


def main() -> None:
    import sys

    if "--data" in sys.argv and "fashion-mnist" in sys.argv:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from fmnist_compare import main as fashion_mnist

        return fashion_mnist(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="seeds 0 and 1 instead of 0, 1, 2")
    p.add_argument("--seeds", help="comma-separated seeds (overrides --quick)")
    p.add_argument("--budget", type=int, default=200, help="evaluations per method and seed")
    p.add_argument("--targets", default="0.2,0.1", help="MACs fractions for the search table")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--round-to", type=int, default=8, help="channel multiple of every plan")
    p.add_argument("--finetune-targets", default="", help="e.g. 0.1,0.05 (default: none)")
    p.add_argument("--finetune-methods", default=FINETUNE_METHODS)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (1 thread each)")
    p.add_argument("--json", help="write the results here (after every finished run)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --json")
    args = p.parse_args()
    methods = args.methods.split(",")
    ft_methods = args.finetune_methods.split(",")
    for m in {*methods, *ft_methods}:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [0, 1]
    if not args.seeds and not args.quick:
        seeds = [0, 1, 2]
    targets = [float(t) for t in args.targets.split(",") if t]
    ft_targets = [float(t) for t in args.finetune_targets.split(",") if t]

    teacher, data = digits_teacher(0)  # trains and caches it once, before the workers start
    teacher_test = accuracy(teacher, data.test)
    print(f"teacher test acc {teacher_test:.4f}; seeds {seeds}; budget {args.budget}", flush=True)
    tasks = []
    for seed in seeds:  # seeds outermost: a cut-short run still has whole seeds
        for target in sorted({*targets, *ft_targets}, reverse=True):
            chosen = methods if target in targets else ft_methods
            for m in sorted(chosen, key=lambda m: LONGEST_FIRST.index(m)):
                ft = target in ft_targets and m in ft_methods
                tasks.append(
                    {
                        "target": target,
                        "seed": seed,
                        "method": m,
                        "budget": args.budget,
                        "round_to": args.round_to,
                        "finetune_epochs": args.finetune_epochs if ft else 0,
                        "threads": 1 if args.jobs > 1 else 0,
                    }
                )
    doc = {"args": vars(args), "seeds": seeds, "teacher_test": teacher_test, "runs": []}
    if args.resume and args.json and Path(args.json).is_file():
        doc["runs"] = json.loads(Path(args.json).read_text())["runs"]
        done = {(r["target"], r["seed"], r["method"]) for r in doc["runs"]}
        tasks = [t for t in tasks if (t["target"], t["seed"], t["method"]) not in done]
        print(f"resuming: {len(doc['runs'])} runs kept, {len(tasks)} to go", flush=True)
    start = time.perf_counter()
    pool = mp.get_context("spawn").Pool(args.jobs) if args.jobs > 1 else None
    results = pool.imap_unordered(run_task, tasks) if pool else map(run_task, tasks)
    for r in results:
        doc["runs"].append(r)
        doc["elapsed_s"] = round(time.perf_counter() - start, 1)
        ft = f"  fine-tuned {r['finetuned_test']:.4f}" if "finetuned_test" in r else ""
        print(
            f"seed {r['seed']} target {r['target']:.2f} {r['method']:<13} test {r['test']:.4f}"
            f"  val {r['val']:.4f}  evals {r['evaluations']:>4}  {r['seconds']:6.1f} s{ft}",
            flush=True,
        )
        if args.json:
            write_bytes(Path(args.json), json.dumps(doc, indent=1).encode())
    if pool:
        pool.close()
        pool.join()
    print(f"\n{len(doc['runs'])} runs in {time.perf_counter() - start:.0f} s")
    print_table(doc["runs"], "test", "test accuracy, BN recalibrated, no fine-tuning", methods)
    title = f"test accuracy after {args.finetune_epochs} epochs of distillation"
    print_table(doc["runs"], "finetuned_test", title, ft_methods)


if __name__ == "__main__":
    main()
