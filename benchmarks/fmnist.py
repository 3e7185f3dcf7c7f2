"""Fashion-MNIST benchmark parts: the teacher, the subsets and the one fine-tuning recipe.

Shared by ``reward_fidelity.py`` and ``search.py --data fashion-mnist --finetune``. Sizes are
set by flags so that a run fits the time this host gives (2 cores shared); every plan of a
run is fine-tuned with the same recipe and seeds.

The teacher: the CIFAR VGG-16 at ``--width``, trained plainly on a seeded subset of the
training split (val, 20 % of train, held out); its recipe is fixed below, not tuned on test.
It is cached (``--cache``) keyed by its settings, so reruns and ``--resume`` reuse it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
from provenance import revision
from torch.utils.data import Subset

import qmixprune as q
from qmixprune.data import load_data
from qmixprune.distill import DistillConfig, distill
from qmixprune.files import write_bytes
from qmixprune.models import create
from qmixprune.train import TrainConfig, accuracy, train

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qmixprune-bench"


def add_args(p) -> None:
    """The flags every Fashion-MNIST benchmark shares."""
    p.add_argument("--width", type=float, default=0.125, help="VGG-16 channel multiplier")
    p.add_argument("--train-size", type=int, default=6000, help="teacher's training subset")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--ft-size", type=int, default=6000, help="fine-tuning subset of train")
    p.add_argument("--ft-epochs", type=int, default=1, help="fine-tuning epochs, every plan")
    p.add_argument("--val-size", type=int, default=1000, help="val samples the rewards see")
    p.add_argument("--test-size", type=int, default=10000, help="test samples reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the host is shared)")
    p.add_argument("--cache", type=Path, default=CACHE, help="where the teacher is kept")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --json")


def setup(args):
    """(teacher, data) with data's splits cut to the benchmark's sizes."""
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", seed=0)
    data.train = Subset(data.train.dataset, data.train.indices[: args.ft_size])
    data.val = Subset(data.val.dataset, data.val.indices[: args.val_size])
    data.test = Subset(data.test, range(min(args.test_size, len(data.test))))
    return teacher(args, data), data


def teacher(args, data):
    """The cached teacher, trained on the first ``--train-size`` samples of the train split."""
    key = f"vgg16-w{args.width}-n{args.train_size}-e{args.teacher_epochs}"
    path = args.cache / f"fmnist-{key}.safetensors"
    if path.is_file():
        return q.load(path).eval()
    torch.manual_seed(0)  # the benchmark script seeds its own model init; library code does not
    model = create("vgg16", width=args.width)
    subset = Subset(data.train.dataset, data.train.indices[: args.train_size])
    cfg = TrainConfig(epochs=args.teacher_epochs, batch_size=64, lr=0.05, seed=0)
    t0 = time.perf_counter()
    train(model, subset, cfg, hflip=True)
    model.eval()
    print(
        f"teacher {key}: val {accuracy(model, data.val):.4f} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    args.cache.mkdir(parents=True, exist_ok=True)
    q.save(model, path)
    return model


def finetune(student, teacher, data, args, seed: int) -> tuple[float, float, float]:
    """The one recipe every plan gets: (val accuracy, test accuracy, seconds)."""
    cfg = replace(DistillConfig(), epochs=args.ft_epochs, seed=seed)
    t0 = time.perf_counter()
    student, _ = distill(student, teacher, data, cfg)
    seconds = time.perf_counter() - t0
    return accuracy(student, data.val), accuracy(student, data.test), seconds


def provenance() -> dict:
    """The git revision and the host's load, stated with every result file."""
    return {
        "revision": revision(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def read_runs(path: Path, resume: bool) -> list[dict]:
    if resume and path.is_file():
        return json.loads(path.read_text()).get("runs", [])
    return []


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
