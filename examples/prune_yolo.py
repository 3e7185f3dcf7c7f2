"""Compress an ultralytics YOLOv8n with the task API: ultralytics' own detection loss as the
fine-tuning step, minus its validation loss as the search's reward; then restore the saved
result onto a fresh model, export both to ONNX and time them with ONNX Runtime.

The script makes its own tiny detection set (one red square or blue disc per 64 px image on
a noisy background, boxes in YOLO's normalised xywh), trains the untrained YOLOv8n (built
from its yaml: nothing is downloaded) for a few epochs, compresses it to half of its MACs
and checks that the restored model's outputs equal the compressed one's. torch.fx cannot
trace YOLO (its C2f blocks iterate over a chunk), so qmixprune captures it with torch.export
and says so in a warning.

    pip install qmixprune[yolo]
    python examples/prune_yolo.py [--model yolov8n|yolo11n] [--out OUT]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

import qmixprune
from qmixprune.data import DataSplits
from qmixprune.deploy.bench import bench
from qmixprune.distill import DistillConfig
from qmixprune.run.config import CompressConfig
from qmixprune.search import EnvConfig, SearchConfig

SIZE = 64


def make_set(n: int, gen: torch.Generator) -> TensorDataset:
    """``n`` images [3, SIZE, SIZE] in [0, 1], each with one object, and its target
    ``[class, cx, cy, w, h]`` (normalised): class 0 a red square, class 1 a blue disc."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    yy, xx = (yy.float() + 0.5) / SIZE, (xx.float() + 0.5) / SIZE
    images = 0.4 + 0.2 * torch.rand(n, 3, 1, 1, generator=gen)
    images = images + 0.05 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    targets = torch.empty(n, 5)
    for i in range(n):
        kind = int(torch.randint(0, 2, (1,), generator=gen))
        r = 0.1 + 0.15 * torch.rand(1, generator=gen).item()
        cx, cy = (r + (1 - 2 * r) * torch.rand(2, generator=gen)).tolist()
        if kind == 0:
            inside = ((xx - cx).abs() < r) & ((yy - cy).abs() < r)
        else:
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        colour = torch.tensor([0.9, 0.15, 0.1]) if kind == 0 else torch.tensor([0.1, 0.2, 0.9])
        images[i][:, inside] = colour[:, None]
        targets[i] = torch.tensor([kind, cx, cy, 2 * r, 2 * r])
    return TensorDataset(images.clamp(0, 1), targets)


def build(name: str) -> DetectionModel:
    """The user's unpruned model: 2 classes, ultralytics' default loss gains."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DetectionModel(f"{name}.yaml", nc=2, verbose=False)
    model.args = get_cfg()  # the loss reads its box/cls/dfl gains from here
    return model


def yolo_loss(model: DetectionModel, batch) -> torch.Tensor:
    """ultralytics' detection loss (box + cls + DFL) of ``model`` on ``(images, targets)``,
    per image."""
    x, y = batch
    labels = {
        "img": x,
        "batch_idx": torch.arange(len(x), dtype=torch.float32),
        "cls": y[:, :1],
        "bboxes": y[:, 1:],
    }
    loss, _ = model.loss(labels)
    return loss.sum() / len(x)


def yolo_step(student, teacher, batch) -> torch.Tensor:
    """The fine-tuning step compress calls: the student's own detection loss."""
    return yolo_loss(student, batch)


@torch.no_grad()
def score(model: DetectionModel, batches: list) -> float:
    """Minus the mean validation loss (higher is better), in eval mode."""
    was = model.training
    model.eval()
    value = -sum(yolo_loss(model, b).item() for b in batches) / len(batches)
    model.train(was)
    return value


def train(model: DetectionModel, data: TensorDataset, epochs: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=gen, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            loss = yolo_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("yolov8n", "yolo11n"), default="yolov8n")
    p.add_argument("--out", default="yolo-pruned.safetensors")
    p.add_argument("--train", type=int, default=256, help="training images")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--bench-runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    train_set, val, test = make_set(args.train, gen), make_set(64, gen), make_set(64, gen)
    data = DataSplits(train_set, val, test, 2, (3, SIZE, SIZE), hflip=False)
    val_batches = list(DataLoader(val, batch_size=32))
    test_batches = list(DataLoader(test, batch_size=32))

    teacher = build(args.model)
    train(teacher, train_set, args.teacher_epochs, args.seed)
    print(
        f"teacher trained in {time.perf_counter() - start:.0f} s: "
        f"test loss {-score(teacher, test_batches):.3f}"
    )

    config = CompressConfig(
        search=SearchConfig(episodes=args.episodes, env=EnvConfig(calib_batches=2)),
        distill=DistillConfig(
            epochs=args.finetune_epochs, batch_size=16, lr=1e-3, optimizer="adamw"
        ),
        seed=args.seed,
        export=False,  # exported below, with the head returning its decoded boxes only
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = qmixprune.compress(
            teacher,
            data,
            target_flops=args.target_flops,
            config=config,
            quiet=True,
            score=lambda m: score(m, val_batches),  # the search's reward, the best epoch's pick
            train_step=yolo_step,  # ultralytics' loss drives the fine-tuning
            calib=(x for x, _ in DataLoader(train_set, batch_size=16)),  # BN recalibration
        )
    captures = {str(w.message) for w in caught if "torch.export" in str(w.message)}
    print(next(iter(captures), "captured by torch.fx"))
    pruned = result.model.eval()

    # restore onto a fresh instance of the class: no pickle, the plan is in the file
    qmixprune.save(pruned, args.out, (3, SIZE, SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restored = qmixprune.load(args.out, model=build(args.model))
    x = torch.stack([test[i][0] for i in range(4)])
    with torch.no_grad():
        same = all(torch.equal(a, b) for a, b in zip(_tensors(restored(x)), _tensors(pruned(x))))
    macs = [qmixprune.count(m, x[:1])[0] for m in (teacher, pruned)]
    print(
        f"MACs {macs[0]:,} -> {macs[1]:,} ({macs[1] / macs[0]:.3f}); test loss "
        f"{-score(teacher, test_batches):.3f} -> {-score(restored, test_batches):.3f}; "
        f"restored from {args.out} with equal outputs: {same}"
    )

    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = []
        for tag, m in (("original", teacher), ("pruned", restored)):
            m.model[-1].export = True  # decoded boxes only, as deployed
            paths.append(str(Path(d) / f"{tag}.onnx"))
            qmixprune.export_onnx(m, paths[-1], x[:1])
        report = bench(paths, batches=(1, 8), threads=2, runs=args.bench_runs, warmup=3)
    for row in report["results"]:
        print(
            f"ONNX Runtime CPU, batch {row['batch']}: {Path(row['model']).stem:<8} "
            f"{row['p50_ms']:.2f} ms ({row['speedup']:.2f}x)"
        )
    print(f"{time.perf_counter() - start:.0f} s in all")
    if not same:
        raise SystemExit(1)


def _tensors(y) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        y = list(y.values())
    return [t for item in y for t in _tensors(item)] if isinstance(y, (list, tuple)) else []


if __name__ == "__main__":
    main()
