"""Latency of ONNX models with ONNX Runtime, on the device this runs on.

Needs only numpy and onnxruntime (no torch), so it runs on an edge device:
``python -m qmixprune.deploy.bench a.onnx b.onnx --batch 1,32``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import check_writable_file, write_json

ENGINE_SUFFIXES = (".engine", ".plan")
# what each latency figure measures: GPU timings are not all the same quantity, so every row
# says which it is (and format_results prints it)
MEASURES = {
    "cpu": "wall time of session.run",
    "gpu": "wall time of session.run, host-device copies of input and output included",
}
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


INSTALL_ORT = (
    "pip install 'qmixprune[cpu]' (onnxruntime) or 'qmixprune[gpu]' (onnxruntime-gpu: CUDA and "
    "TensorRT providers; never both, the CPU package replaces the GPU one)"
)


def onnxruntime(purpose: str = "this"):
    """The onnxruntime module, or a UserError saying which extra installs it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UserError(
            f"{purpose} needs ONNX Runtime, which is not installed: {INSTALL_ORT}"
        ) from exc
    return ort


def trt_cache_dir() -> Path:
    """Where ONNX Runtime's TensorRT provider keeps its engines between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qmixprune" / "ort-tensorrt"


def providers_for(
    provider: str, device_id: int = 0, fp16: bool = False, trt_cache: str | Path | None = None
) -> list:
    """ONNX Runtime's provider list for ``provider``: the GPU ones on GPU ``device_id``, and
    TensorRT's with its engine cache (engines take minutes to build) and fp16 switch."""
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if provider == "tensorrt":
        cache = Path(trt_cache) if trt_cache is not None else trt_cache_dir()
        trt = {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_fp16_enable": fp16,
        }
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]
    return [PROVIDERS[provider]]


def device_info(provider: str = "cpu") -> dict:
    """What the numbers were measured on."""
    ort = onnxruntime("benchmarking")

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        q = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        gpu = subprocess.run(q, capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "provider": provider,
        "onnxruntime": ort.__version__,
        "platform": platform.platform(),
    }


def session(
    path: str | Path,
    provider: str = "cpu",
    threads: int | None = None,
    spin: bool = False,
    config: dict[str, str] | None = None,
    *,
    device_id: int = 0,
    fp16: bool = False,
    trt_cache: str | Path | None = None,
):
    """An ONNX Runtime session running on ``provider`` (refused when ORT fell back to another,
    which it does silently when a GPU provider fails to load); idle worker threads spin only
    with ``spin``; ``config`` adds session config entries (ONNX Runtime's ``key: value``
    strings). ``device_id``: the GPU; ``fp16``, ``trt_cache``: TensorRT's options."""
    ort = onnxruntime("benchmarking")

    if provider not in PROVIDERS:
        raise UserError(f"unknown provider {provider!r}; choose one of {list(PROVIDERS)}")
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        hint = {
            "cuda": "pip install onnxruntime-gpu (with CUDA and cuDNN)",
            "tensorrt": "onnxruntime-gpu built with TensorRT, or JetPack on a Jetson",
        }
        raise UserError(
            f"ONNX Runtime here has no {name} ({hint.get(provider, '')}); "
            f"available: {ort.get_available_providers()}"
        )
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # ORT's idle workers spin by default; with several models taking turns, the spinning
    # pools of the idle sessions steal cores from the one being timed (measured here on 2
    # cores: times swung 2-4x between identical runs with spinning, within ~10 % without)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    providers = providers_for(provider, device_id, fp16, trt_cache)
    if provider == "tensorrt":
        Path(providers[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    try:
        sess = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:
        raise UserError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0]}") from exc
    running = sess.get_providers()
    if not running or running[0] != name:
        raise UserError(
            f"ONNX Runtime could not start {name} and fell back to {running[:1] or 'nothing'} "
            "(its log above says why: CUDA, cuDNN or TensorRT libraries not found or of "
            "another version); timings would not be of the provider asked for"
        )
    return sess


def _feed(sess, batch: int, seed: int = 0) -> dict:
    """A random input of the model's shape at ``batch``."""
    inp = sess.get_inputs()[0]
    if isinstance(inp.shape[0], int) and inp.shape[0] != batch:
        raise UserError(
            f"the model has a fixed batch of {inp.shape[0]}; export it with "
            f"--dynamic-batch to time batch {batch}"
        )
    shape = [batch, *inp.shape[1:]]
    if any(not isinstance(d, int) for d in shape):
        raise UserError(f"input shape {inp.shape} has free dimensions other than the batch")
    dtype = np.float16 if "float16" in inp.type else np.float32
    return {inp.name: np.random.default_rng(seed).standard_normal(shape).astype(dtype)}


def _stats(times: np.ndarray, batch: int) -> dict:
    ms = times * 1e3
    return {
        "batch": batch,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput": float(batch / np.median(times)),
    }


def bench(
    models: list[str],
    batches=(1, 32),
    provider="cpu",
    threads=None,
    runs=200,
    warmup=20,
    block: int = 10,
    spin: bool = False,
) -> dict:
    """Time every model at every batch; each row's speed-up is over the first model.

    The models take turns in blocks of ``block`` runs, so slow drifts of the machine hit them
    alike, and a speed-up is the median of the per-block ratios (pairs measured seconds
    apart)."""
    if any(Path(m).suffix in ENGINE_SUFFIXES for m in models):
        return _bench_engines(models, batches, runs, warmup)
    sessions = [session(m, provider, threads, spin) for m in models]
    results = []
    for b in batches:
        calls = [caller(s, _feed(s, b)) for s in sessions]
        for call in calls:
            for _ in range(warmup):
                call()
        times = take_turns(calls, runs, block)
        measures = MEASURES["cpu" if provider == "cpu" else "gpu"]
        rows = [
            {"model": str(m), **_stats(np.concatenate(t), b), "measures": measures}
            for m, t in zip(models, times)
        ]
        for row, t in zip(rows, times):
            row["speedup"] = paired_speedup(times[0], t)
        results += rows
    return {"device": device_info(provider), "threads": threads, "runs": runs, "results": results}


def caller(sess, feed: dict):
    """A no-argument call that runs ``sess`` on ``feed`` (what ``take_turns`` times)."""
    return lambda: sess.run(None, feed)


def take_turns(calls, runs: int, block: int = 10, rewarm: int = 3, clock=time.perf_counter):
    """Seconds per call: ``calls`` take turns in blocks of ``block`` timed runs.

    Each turn starts with ``rewarm`` untimed runs: the model that ran before may have left
    its thread pool spinning and the caches full of its weights (measured here: without
    them an unpruned VGG-16 at batch 1 timed 2.6x slower interleaved than alone).
    Returns, per call, a list of blocks (arrays of seconds)."""
    out: list[list[np.ndarray]] = [[] for _ in calls]
    done = 0
    while done < runs:
        n = min(block, runs - done)
        for i, call in enumerate(calls):
            for _ in range(rewarm):
                call()
            ts = np.empty(n)
            for j in range(n):
                t0 = clock()
                call()
                ts[j] = clock() - t0
            out[i].append(ts)
        done += n
    return out


def paired_speedup(base: list[np.ndarray], other: list[np.ndarray]) -> float:
    """Median over blocks of base's block median / other's block median."""
    return float(np.median([np.median(a) / np.median(b) for a, b in zip(base, other)]))


def _bench_engines(models, batches, runs, warmup) -> dict:
    """TensorRT engine files, timed by trtexec or TensorRT's runtime (no torch); each row
    gives the batch that was run, inside the engine's profile."""
    from .tensorrt import time_engine

    if not all(Path(m).suffix in ENGINE_SUFFIXES for m in models):
        raise UserError("compare engines with engines and ONNX files with ONNX files")
    results = []
    for b in batches:
        rows = [{"model": str(m), **time_engine(m, b, runs, warmup)} for m in models]
        for row in rows:
            row["speedup"] = rows[0]["p50_ms"] / row["p50_ms"]
        results += rows
    return {"device": device_info("tensorrt"), "threads": None, "runs": runs, "results": results}


def short_labels(paths: list[str]) -> list[str]:
    """The shortest trailing parts of each path that tell the paths apart (``a/model.onnx``
    and ``b/model.onnx``, not twice ``model.onnx``)."""
    parts = [Path(p).parts for p in paths]
    distinct = len(set(paths))
    for k in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = [str(Path(*p[-k:])) for p in parts]
        if len(set(labels)) == distinct:
            return labels
    return [str(p) for p in paths]


def format_results(report: dict) -> str:
    rows = report["results"]
    labels = short_labels([r["model"] for r in rows])
    width = max([5, *(len(x) for x in labels)])
    lines = [
        f"{'model':<{width}} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'img/s':>9} {'speed-up*':>9}"
    ]
    for label, r in zip(labels, rows):
        lines.append(
            f"{label:<{width}} {r['batch']:>5} {r['p50_ms']:>9.3f} "
            f"{r['p90_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['throughput']:>9.1f} "
            f"{r['speedup']:>8.2f}x"
        )
    for measures in dict.fromkeys(r["measures"] for r in rows if r.get("measures")):
        lines.append(f"latency: {measures}")
    if any("tool" in r for r in rows):  # TensorRT engines, timed one after the other
        lines.append("* over the first model at the same batch: the ratio of the p50 columns")
    else:
        lines.append(
            "* over the first model at the same batch: the median, over blocks of runs taken "
            "in turns, of the ratio of the two blocks' medians (pairs measured seconds apart, "
            "so the machine's drifts cancel); it can differ from the ratio of the p50 columns"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", help="ONNX files; speed-ups are over the first")
    p.add_argument(
        "--provider", default="cpu", choices=list(PROVIDERS), help="ONNX Runtime execution provider"
    )
    p.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument("--runs", type=int, default=200, help="timed runs per model and batch")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs before timing")
    p.add_argument(
        "--spin",
        action="store_true",
        help="let idle worker threads spin (ORT's default: lower latency for one model "
        "alone; off by default because idle spinning sessions slow the one being timed)",
    )
    p.add_argument("--json", help="write the results here too")


def run(args: argparse.Namespace) -> int:
    try:
        batches = [int(b) for b in str(args.batch).split(",") if b]
    except ValueError:
        raise UserError(f"--batch takes comma-separated integers, got {args.batch!r}") from None
    if not batches or min(batches) < 1 or args.runs < 1:
        raise UserError("--batch sizes and --runs must be >= 1")
    if args.json:  # before the timing, not after it
        check_writable_file(args.json, "--json")
    report = bench(
        args.models,
        batches,
        args.provider,
        args.threads,
        args.runs,
        args.warmup,
        spin=args.spin,
    )
    print(format_results(report))
    if args.json:
        write_json(args.json, report)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qmixprune.deploy.bench", description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"qmixprune bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
