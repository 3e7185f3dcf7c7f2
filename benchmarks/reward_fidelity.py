"""Does the search's reward predict the fine-tuned model? (Fashion-MNIST, issue 22 item 2)

At one MACs target, distinct plans from uniform, global L1, random keep fractions, and the
best plans QMIX and evolution found are each scored by every candidate reward (on the same
val batches, after the same BN recalibration):

  acc      val accuracy as pruned (the search's default reward)
  loss     minus the val cross-entropy
  kl       minus the KL divergence from the teacher's val outputs
  distill  val accuracy after --distill-steps steps of distillation (fixed batches)

and then fine-tuned identically (``fmnist.finetune``: the same epochs, seed, subset). Per
reward: Kendall tau with the fine-tuned accuracy (val and test), and the regret of picking
the plan the reward ranks first (best fine-tuned test accuracy minus that plan's).

    python benchmarks/reward_fidelity.py --target 0.1 \
        --json benchmarks/results/reward-fidelity-0.1.json [--resume]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmnist  # noqa: E402

from qmixprune.search import EnvConfig, SearchConfig, build_env, search  # noqa: E402
from qmixprune.search.baselines import evolutionary, global_l1, uniform  # noqa: E402
from qmixprune.search.evaluator import val_score  # noqa: E402
from qmixprune.search.pick import top_plans  # noqa: E402
from qmixprune.search.rewards import distill_score, kendall_tau, kl_score  # noqa: E402
from qmixprune.train import loader  # noqa: E402

REWARDS = ("acc", "loss", "kl", "distill")


def plans(env, args) -> list[tuple[str, dict]]:
    """(source, counts) of distinct plans: uniform, global L1, QMIX's and evolution's best
    few, then random ones up to --plans."""
    out, seen = [], set()

    def add(source, counts):
        key = tuple(counts[g] for g in env.groups)
        if key not in seen:
            seen.add(key)
            out.append((source, counts))

    add("uniform", uniform(env).counts)
    add("global_l1", global_l1(env).counts)
    env.evaluator.reset()
    cfg = SearchConfig(episodes=20 * args.budget, max_evaluations=args.budget, patience=0)
    search(env, cfg)
    for counts, _ in top_plans(env, args.top):
        add("qmix", counts)
    env.evaluator.reset()
    evolutionary(env, args.budget, seed=0)
    for counts, _ in top_plans(env, args.top):
        add("evolutionary", counts)
    gen = torch.Generator().manual_seed(1)
    tries = 0
    while len(out) < args.plans and tries < 50 * args.plans:
        tries += 1
        keep = 0.15 + 0.85 * torch.rand(len(env.groups), generator=gen)
        add("random", env.project(keep))
    return out


def scorers(teacher, data, env, args) -> dict:
    """Every reward, on the same fixed val batches (those the search's reward uses)."""
    val = list(itertools.islice(loader(data.val, 128, False), env.cfg.reward_batches))
    with torch.no_grad():
        logits = [teacher(x).float() for x, _ in val]
    batches = loader(data.train, 64, shuffle=True, seed=1)
    train = list(itertools.islice(batches, args.distill_steps))
    return {
        "acc": val_score(val, "acc"),
        "loss": val_score(val, "loss"),
        "kl": kl_score(val, logits),
        "distill": distill_score(teacher, train, val, args.distill_steps),
    }


def analyse(runs: list[dict]) -> dict:
    """Per reward: Kendall tau with the fine-tuned val and test accuracy, and the regret."""
    best_test = max(r["ft_test"] for r in runs)
    out = {}
    for name in REWARDS:
        rewards = [r["rewards"][name] for r in runs]
        top = max(range(len(runs)), key=lambda i: rewards[i])
        out[name] = {
            "tau_test": kendall_tau(rewards, [r["ft_test"] for r in runs]),
            "tau_val": kendall_tau(rewards, [r["ft_val"] for r in runs]),
            "regret": best_test - runs[top]["ft_test"],
            "picked": runs[top]["source"],
        }
    return out


def plot(runs: list[dict], path: Path, target: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(REWARDS), figsize=(4 * len(REWARDS), 3.4))
    colors = {"uniform": "k", "global_l1": "tab:gray", "qmix": "tab:red"}
    colors.update({"evolutionary": "tab:blue", "random": "tab:green"})
    tau = analyse(runs)
    for ax, name in zip(axes, REWARDS):
        for source, color in colors.items():
            pts = [(r["rewards"][name], r["ft_test"]) for r in runs if r["source"] == source]
            if pts:
                ax.scatter(*zip(*pts), s=14, c=color, label=source)
        t = tau[name]["tau_test"]
        ax.set_title(f"{name}: tau {t:+.2f}" if t is not None else name)
        ax.set_xlabel(f"reward ({name})")
    axes[0].set_ylabel("test accuracy after fine-tuning")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Fashion-MNIST, {target} of the MACs: reward vs fine-tuned accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    fmnist.add_args(p)
    p.add_argument("--target", type=float, default=0.1, help="fraction of the MACs kept")
    p.add_argument("--plans", type=int, default=24, help="distinct plans")
    p.add_argument("--budget", type=int, default=40, help="evaluations of QMIX and evolution")
    p.add_argument("--top", type=int, default=4, help="best plans taken from each search")
    p.add_argument("--distill-steps", type=int, default=25)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    teacher, data = fmnist.setup(args)
    env = build_env(teacher, data, EnvConfig(target_flops=args.target), seed=0)
    runs = fmnist.read_runs(args.json, args.resume)
    done = {tuple(r["counts"][g] for g in env.groups) for r in runs}
    t0 = time.perf_counter()
    found = plans(env, args)
    print(f"{len(found)} plans ({time.perf_counter() - t0:.0f} s)", flush=True)
    score = scorers(teacher, data, env, args)
    doc = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    for source, counts in found:
        if tuple(counts[g] for g in env.groups) in done:
            continue
        candidate = env.evaluator.candidate(counts)
        rewards = {name: float(f(copy.deepcopy(candidate))) for name, f in score.items()}
        ft_val, ft_test, seconds = fmnist.finetune(copy.deepcopy(candidate), teacher, data, args, 0)
        runs.append(
            {
                "source": source,
                "counts": counts,
                "macs": env.cost.ratio(counts),
                "rewards": rewards,
                "ft_val": ft_val,
                "ft_test": ft_test,
                "ft_seconds": round(seconds, 1),
            }
        )
        print(
            f"{source:<12} "
            + " ".join(f"{k} {v:+.4f}" for k, v in rewards.items())
            + f"  fine-tuned val {ft_val:.4f} test {ft_test:.4f}",
            flush=True,
        )
        doc.update(provenance=fmnist.provenance(), analysis=analyse(runs) if len(runs) > 1 else {})
        fmnist.write_json(args.json, doc)
    doc.update(provenance=fmnist.provenance(), analysis=analyse(runs))
    fmnist.write_json(args.json, doc)
    plot(runs, args.json.with_suffix(".png"), args.target)
    for name, a in doc["analysis"].items():
        tt = "n/a" if a["tau_test"] is None else f"{a['tau_test']:+.2f}"
        print(f"{name:<8} tau(test) {tt}  regret {a['regret']:.4f}  picks {a['picked']}")


if __name__ == "__main__":
    main()
