"""The paper's experiment: VGG-16 and AlexNet on CIFAR-10/100, compressed at several FLOPs
targets (QMIX search + distillation), in the paper's table layout.

With a GPU and the data sets:  python benchmarks/paper_table.py --data-dir D [--download]
Here (CPU, no data sets):       python benchmarks/paper_table.py --small
``--small`` runs the same pipeline on the bundled digits with width-0.5 models and short
schedules; its numbers show the pipeline works, not the paper's accuracies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from qmixprune.data import load_data
from qmixprune.distill import DistillConfig
from qmixprune.models import create
from qmixprune.run.compress import CompressConfig, compress
from qmixprune.search import SearchConfig
from qmixprune.train import TrainConfig, accuracy, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="digits, width 0.5, short schedules")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--download", action="store_true")
    p.add_argument("--models", default="vgg16,alexnet")
    p.add_argument("--datasets", default="cifar10,cifar100")
    p.add_argument("--targets", default="0.5,0.3")
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--distill-epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    datasets = ["digits"] if args.small else args.datasets.split(",")
    width = 0.5 if args.small else 1.0
    t_epochs = args.teacher_epochs or (6 if args.small else 160)
    episodes = args.episodes or (60 if args.small else 400)
    d_epochs = args.distill_epochs or (4 if args.small else 60)
    rows = []
    for ds in datasets:
        data = load_data(ds, None if ds == "digits" else args.data_dir, args.download, args.seed)
        for name in args.models.split(","):
            torch.manual_seed(args.seed)
            teacher = create(name, num_classes=data.num_classes, width=width)
            train(
                teacher,
                data.train,
                TrainConfig(epochs=t_epochs, lr=0.05, seed=args.seed),
                hflip=data.hflip,
            )
            base = accuracy(teacher, data.test)
            for target in [float(t) for t in args.targets.split(",")]:
                cfg = CompressConfig(
                    target_flops=target,
                    seed=args.seed,
                    export=False,
                    search=SearchConfig(episodes=episodes),
                    distill=DistillConfig(epochs=d_epochs),
                )
                res = compress(teacher, data, config=cfg, quiet=True)
                row = {
                    "model": name,
                    "data": ds,
                    "target": target,
                    "base_acc": base,
                    "pruned_acc": res.pruned["test_acc"],
                    "macs_down": 1 - res.pruned["macs"] / res.original["macs"],
                    "params_down": 1 - res.pruned["params"] / res.original["params"],
                }
                rows.append(row)
                print(
                    f"{name:<8} {ds:<9} keep {target:.2f}  base {base:.4f}  pruned "
                    f"{row['pruned_acc']:.4f}  MACs -{row['macs_down']:.1%}  params "
                    f"-{row['params_down']:.1%}",
                    flush=True,
                )
    print("\n| model | data | base acc | pruned acc | FLOPs down | params down |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['data']} | {r['base_acc']:.2%} | {r['pruned_acc']:.2%} | "
            f"{r['macs_down']:.1%} | {r['params_down']:.1%} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
