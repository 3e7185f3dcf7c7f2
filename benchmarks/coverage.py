"""How many torchvision and timm classifiers and ultralytics YOLO models qmixprune prunes,
next to Torch-Pruning, on equal terms.

Both tools get the same model (same seed), the same input, a 30 % ratio per group by L1
magnitude, and the same ignored layers: every layer that produces the model's output
(found by qmixprune's graph, e.g. SqueezeNet's 1x1-conv classifier; else the last
Conv/Linear to run). A model passes when the pruned forward runs, the output shape is
unchanged, at least 20 % of the MACs are cut (same counter for both) and the tool's own
save/restore round trip onto a fresh instance gives equal outputs (qmixprune: save /
load(path, model=fresh); Torch-Pruning: tp.state_dict / tp.load_state_dict, which pickles).

The ultralytics section (YOLOv5u detect; v8 and 11: detect, segment, pose, OBB; built untrained
from their yaml) prunes at 50 % per group on 128 px inputs, the same pass rule, every output
tensor's shape unchanged and equal after the round trip.

Each (model, tool) runs in its own process, killed past --mem-gb of resident memory or
--timeout seconds (Torch-Pruning's tracer was OOM-killed at 24 GB on Swin-T here), so one
model cannot take the run down; such kills are reported as failures.

    flock /tmp/qmixprune-heavy.lock python benchmarks/coverage.py [--models a,b]
        [--section torchvision|timm|ultralytics] [--json F]

The JSON file holds the command, the git revision, the load average before and after, and
one row per model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from provenance import revision

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

# one small member of each CNN family (timm names)
TIMM = [
    "resnet18",
    "resnext26ts",
    "regnetx_002",
    "efficientnet_b0",
    "mobilenetv3_small_050",
    "ghostnet_050",
    "ghostnet_100",
    "convnext_atto",
    "densenet121",
    "dla34",
    "hrnet_w18_small",
    "rexnet_100",
    "cspresnet50",
    "dpn68",
    "res2net50_14w_8s",
    "mixnet_s",
]
# ultralytics model yaml names (no weights: the architecture is what is pruned)
ULTRALYTICS = [
    "yolov5nu",
    "yolov8n",
    "yolov8n-seg",
    "yolov8n-pose",
    "yolov8n-obb",
    "yolo11n",
    "yolo11n-seg",
    "yolo11n-pose",
    "yolo11n-obb",
]
RATIO = 0.3
RATIOS = {"ultralytics": 0.5}  # the detectors' ratio; the classifiers' is RATIO
MAX_KEPT = 0.8  # a pass cuts at least 20 % of the MACs


def input_size(source: str, name: str) -> int:
    if source == "ultralytics":
        return 128
    if source == "torchvision" and name.startswith(("vit", "swin", "maxvit")):
        return 224
    return 299 if "inception" in name else 64


def build(source: str, name: str) -> torch.nn.Module:
    from qmixprune.models import create

    torch.manual_seed(0)  # both tools prune the same weights
    if source == "ultralytics":
        from ultralytics.nn import tasks

        kind = name.rpartition("-")[2] if "-" in name else ""
        cls = {
            "seg": tasks.SegmentationModel,
            "pose": tasks.PoseModel,
            "obb": tasks.OBBModel,
        }.get(kind, tasks.DetectionModel)
        return cls(name + ".yaml", verbose=False).eval()
    return create(f"{source}:{name}").eval()


def output_layers(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """Modules whose channels are the model's output, by qmixprune's graph; else the last
    Conv/Linear to run."""
    import qmixprune as q

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = q.analyze(model, x)
        names = [
            s.module
            for g in graph.groups
            if "the model's output" in g.reason
            for s in g.slots
            if s.kind in ("conv_out", "linear_out")
        ]
        if names:
            return sorted(set(names))
    except Exception:  # untraceable: fall back to execution order
        pass
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_, n=n: order.append(n))
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return order[-1:]


def _tensors(y) -> list[torch.Tensor]:
    """Every tensor of a model's output (detectors return nests of them)."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        return [t for item in y for t in _tensors(item)]
    return []


def _shapes(y) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _tensors(y)]


def _outputs_equal(a, b) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb))


def ours(source: str, name: str, x: torch.Tensor) -> dict:
    import qmixprune as q

    model = build(source, name)
    ignored = output_layers(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = q.analyze(model, x)
        pruned = q.apply_plan(model, graph, q.make_plan(model, graph, RATIOS.get(source, RATIO)))
        pruned.eval()
    with torch.no_grad():
        y0, y1 = model(x), pruned(x)
    result = {
        "ignored": ignored,
        "kept": q.count(pruned, x)[0] / q.count(model, x)[0],
        "capture": graph.capture,
    }
    if _shapes(y0) != _shapes(y1):
        return {**result, "status": f"output shapes {_shapes(y1)} != {_shapes(y0)}"}
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = q.save(pruned, Path(d) / "m.safetensors", tuple(x.shape[1:]))
        loaded = q.load(path, model=build(source, name))
        with torch.no_grad():
            if not _outputs_equal(loaded(x), y1):
                return {**result, "status": "save/load changed the outputs"}
    return {**result, "status": _cut_enough(result["kept"])}


def with_torch_pruning(source: str, name: str, x: torch.Tensor, ignored: list[str]) -> dict:
    import torch_pruning as tp

    import qmixprune as q

    model = build(source, name)
    ignored = ignored or output_layers(model, x)
    modules = dict(model.named_modules())
    base = q.count(model, x)[0]
    with torch.no_grad():
        y0 = model(x)
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        ignored_layers=[modules[n] for n in ignored],
    )
    pruner.step()
    model.eval()
    with torch.no_grad():
        y1 = model(x)
    result = {"ignored": ignored, "kept": q.count(model, x)[0] / base}
    if y1.shape != y0.shape:
        return {**result, "status": f"output shape {tuple(y1.shape)} != {tuple(y0.shape)}"}
    with tempfile.TemporaryDirectory() as d:  # Torch-Pruning's own format (pickled)
        torch.save(tp.state_dict(model), Path(d) / "m.pth")
        state = torch.load(Path(d) / "m.pth", weights_only=False)
        loaded = tp.load_state_dict(build(source, name), state_dict=state).eval()
        with torch.no_grad():
            if not _outputs_equal(loaded(x), y1):
                return {**result, "status": "save/load changed the outputs"}
    return {**result, "status": _cut_enough(result["kept"])}


def _cut_enough(kept: float) -> str:
    return "ok" if kept <= MAX_KEPT else f"only {1 - kept:.0%} of the MACs cut"


def job(args) -> None:
    """One (model, tool) in this process; prints one JSON line."""
    x = torch.randn(1, 3, input_size(args.source, args.name), input_size(args.source, args.name))
    try:
        if args.job == "ours":
            out = ours(args.source, args.name, x)
        else:
            out = with_torch_pruning(args.source, args.name, x, json.loads(args.ignored))
    except Exception as exc:  # a failure to record, not to stop on
        text = str(exc).strip().splitlines()
        out = {"status": f"{type(exc).__name__}: {text[0][:100] if text else ''}"}
    print("RESULT " + json.dumps(out), flush=True)


def _rss_gb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (GB), from /proc."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 2**20


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids]


def run_guarded(cmd: list[str], mem_gb: float, timeout: float) -> dict:
    """Run one job; kill it past ``mem_gb`` resident or ``timeout`` seconds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    t0, peak, why = time.monotonic(), 0.0, ""
    while proc.poll() is None:
        peak = max(peak, _rss_gb(proc.pid))
        if peak > mem_gb:
            why = f"killed: over {mem_gb:g} GB of memory"
        elif time.monotonic() - t0 > timeout:
            why = f"killed: over {timeout:g} s"
        if why:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.2)
    out = proc.stdout.read()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if why or not lines:
        result = {"status": why or f"crashed (exit {proc.returncode})"}
    else:
        result = json.loads(lines[-1][len("RESULT ") :])
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["peak_gb"] = round(peak, 2)
    return result


def _fmt(r: dict | None) -> str:
    if r is None:
        return "-"
    kept = f"{r['kept']:.2f}" if r.get("kept") is not None else "  - "
    return f"{kept}  {r['status'][:44]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated subset (names of the chosen section)")
    p.add_argument("--section", choices=["torchvision", "timm", "ultralytics"], action="append")
    p.add_argument("--json")
    p.add_argument("--mem-gb", type=float, default=8.0)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--job", choices=["ours", "tp"], help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--ignored", default="[]", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        return job(args)
    import torchvision

    sections = args.section or ["torchvision", "timm"]
    todo = []
    for source in sections:
        if source == "torchvision":
            names = [
                n
                for n in torchvision.models.list_models(module=torchvision.models)
                if n not in TOO_BIG
            ]
        elif source == "ultralytics":
            try:
                import ultralytics  # noqa: F401
            except ImportError:
                print("ultralytics not installed (pip install qmixprune[yolo]): skipped")
                continue
            names = ULTRALYTICS
        else:
            try:
                import timm  # noqa: F401
            except ImportError:
                print("timm not installed (pip install timm): its section is skipped")
                continue
            names = TIMM
        if args.models:
            names = [n for n in names if n in args.models.split(",")]
        todo += [(source, n) for n in names]
    try:
        import torch_pruning

        tp_version = torch_pruning.__version__
    except ImportError:
        tp_version = None
    me = [sys.executable, os.path.abspath(__file__)]
    guard = {"mem_gb": args.mem_gb, "timeout": args.timeout}
    rows = []
    doc = {
        "command": " ".join(["python", "benchmarks/coverage.py", *sys.argv[1:]]),
        "revision": revision(),
        "load_before": list(os.getloadavg()),
        "ratio": RATIO,
        "ratios": RATIOS,
        "torch_pruning": tp_version,
        "rows": rows,
    }
    ratios = "".join(f", {k} {v}" for k, v in RATIOS.items() if k in sections)
    print(f"MACs kept and result at ratio {RATIO}{ratios} (pass: runs, same output shapes,")
    print(f"<= {MAX_KEPT} of the MACs, exact round trip); Torch-Pruning {tp_version or 'none'}")
    print(f"{'model':<34} {'qmixprune':<50} {'torch-pruning'}")
    for source, name in todo:
        a = run_guarded([*me, "--job", "ours", "--source", source, "--name", name], **guard)
        b = None
        if tp_version and source != "ultralytics":  # its C2f needs Torch-Pruning's own code
            cmd = [*me, "--job", "tp", "--source", source, "--name", name]
            b = run_guarded([*cmd, "--ignored", json.dumps(a.get("ignored", []))], **guard)
        rows.append({"source": source, "model": name, "qmixprune": a, "torch_pruning": b})
        print(f"{source + ':' + name:<34} {_fmt(a):<50} {_fmt(b)}", flush=True)
        if args.json:  # after every model: an interrupted run keeps what it measured
            doc["load_after"] = list(os.getloadavg())
            Path(args.json).write_text(json.dumps(doc, indent=2))
    print()
    for source in sections:
        part = [r for r in rows if r["source"] == source]
        if not part:
            continue
        for tool in ("qmixprune", "torch_pruning"):
            if tool == "torch_pruning" and not tp_version:
                continue
            ok = [r for r in part if r[tool] and r[tool]["status"] == "ok"]
            kept = sorted(r[tool]["kept"] for r in ok)
            median = f", median MACs kept of passes {kept[len(kept) // 2]:.2f}" if kept else ""
            print(f"{source} {tool}: {len(ok)} of {len(part)} passed{median}")


if __name__ == "__main__":
    main()
