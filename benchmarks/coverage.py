"""How many torchvision classifiers qmixprune prunes, next to Torch-Pruning.

For every classification model (those over ~1 GB of weights skipped): prune 30 % of each
group's channels by L1, check that the forward runs, the output shape is unchanged, the
MACs fall, and that save/load round-trips exactly. The same with Torch-Pruning (if
installed: pip install torch-pruning) in the same run.

    python benchmarks/coverage.py [--models a,b] [--json F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

import qmixprune as q
from qmixprune.models import create

TOO_BIG = {
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "regnet_y_128gf",
    "regnet_y_32gf",
    "regnet_y_16gf",
    "efficientnet_v2_l",
    "convnext_large",
    "swin_v2_b",
    "swin_b",
    "vit_b_16",
    "vit_b_32",
    "maxvit_t",
}  # > ~1 GB to build and trace here, or heavy


# Torch-Pruning's tracer exhausts memory on Swin (over 18 GB seen here; 24 GB was
# OOM-killed in this benchmark), so it is not run on them
TP_SKIP = ("swin",)


def input_size(name: str) -> int:
    return 224 if name.startswith(("vit", "swin", "maxvit")) else 299 if "inception" in name else 64


def ours(name: str) -> str:
    model = create(f"torchvision:{name}").eval()
    x = torch.randn(1, 3, input_size(name), input_size(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = q.prune(model, x, 0.3).eval()
    with torch.no_grad():
        y0, y1 = model(x), pruned(x)
    if y0.shape != y1.shape:
        return f"output shape {tuple(y1.shape)} != {tuple(y0.shape)}"
    if q.count(pruned, x)[0] >= q.count(model, x)[0]:
        return "MACs did not fall"
    with tempfile.TemporaryDirectory() as d:
        loaded = q.load(q.save(pruned, Path(d) / "m.safetensors", input_shape=x.shape[1:]))
        with torch.no_grad():
            if not torch.equal(loaded(x), y1):
                return "save/load changed the outputs"
    return ""


def with_torch_pruning(name: str) -> str:
    import torch_pruning as tp

    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, input_size(name), input_size(name))
    with torch.no_grad():
        y0 = model(x)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.3,
        ignored_layers=last,
    )
    pruner.step()
    with torch.no_grad():
        y1 = model(x)
    if y1.shape != y0.shape:
        return "output shape changed"
    with tempfile.TemporaryDirectory() as d:  # Torch-Pruning saves the whole pickled model
        torch.save(model, Path(d) / "m.pt")
        loaded = torch.load(Path(d) / "m.pt", weights_only=False)
        with torch.no_grad():
            if not torch.equal(loaded(x), y1):
                return "save/load changed the outputs"
    return ""


def run(fn, name: str) -> str:
    try:
        return fn(name)
    except Exception as exc:  # a failure to record, not to stop on
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated subset")
    p.add_argument("--json")
    args = p.parse_args()
    names = (
        args.models.split(",")
        if args.models
        else [
            n for n in torchvision.models.list_models(module=torchvision.models) if n not in TOO_BIG
        ]
    )
    try:
        import torch_pruning  # noqa: F401

        have_tp = True
    except ImportError:
        have_tp = False
    rows = []
    print(f"{'model':<28} {'qmixprune':<40} {'torch-pruning' if have_tp else ''}")
    for name in names:
        t0 = time.perf_counter()
        a = run(ours, name)
        skip_tp = name.startswith(TP_SKIP)
        b = (
            ("skipped: out of memory" if skip_tp else run(with_torch_pruning, name))
            if have_tp
            else None
        )
        rows.append(
            {
                "model": name,
                "qmixprune": a or "ok",
                "torch_pruning": (b or "ok") if have_tp else None,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(
            f"{name:<28} {(a or 'ok')[:40]:<40} {(b or 'ok')[:40] if have_tp else ''}", flush=True
        )
    ok = sum(r["qmixprune"] == "ok" for r in rows)
    print(f"\nqmixprune: {ok} passed, {len(rows) - ok} failed")
    if have_tp:
        ok_tp = sum(r["torch_pruning"] == "ok" for r in rows)
        print(f"torch-pruning: {ok_tp} passed, {len(rows) - ok_tp} failed")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
