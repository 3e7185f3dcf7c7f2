"""Writes docs/benchmarks-finetune.md's tables from the Fashion-MNIST raw results.

    python benchmarks/fmnist_report.py \\
        --fidelity benchmarks/results/reward-fidelity-0.1.json \\
        --compare benchmarks/results/search-fmnist-finetune.json \\
        --out docs/benchmarks-finetune.md

Only the text between the marker comments is replaced; the prose around it is kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from qmixprune.files import write_bytes

START = "<!-- fmnist-tables:start (python benchmarks/fmnist_report.py) -->"
END = "<!-- fmnist-tables:end -->"


def _prov(doc: dict, path: Path) -> str:
    p = doc.get("provenance", {})
    load = ", ".join(str(v) for v in p.get("loadavg", []))
    return (
        f"Raw: [`{path.name}`](../benchmarks/results/{path.name}); revision "
        f"`{p.get('revision', '?')}`; load average ({load}) on {p.get('cpus', '?')} CPUs "
        f"at the last write; torch threads {p.get('torch_threads', '?')}."
    )


def fidelity(path: Path) -> str:
    doc = json.loads(path.read_text())
    runs, a = doc["runs"], doc["analysis"]
    sources: dict[str, int] = {}
    for r in runs:
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    ft = [100 * r["ft_test"] for r in runs]
    lines = [
        f"{len(runs)} distinct plans at {doc['args']['target']} of the MACs "
        f"({', '.join(f'{k} {v}' for k, v in sources.items())}); fine-tuned test accuracy "
        f"{min(ft):.2f}-{max(ft):.2f} %.",
        "",
        "| reward | Kendall tau vs fine-tuned test | vs fine-tuned val | regret (points) | "
        "its top plan |",
        "|---|---|---|---|---|",
    ]
    for name, v in a.items():
        tt = "n/a" if v["tau_test"] is None else f"{v['tau_test']:+.2f}"
        tv = "n/a" if v["tau_val"] is None else f"{v['tau_val']:+.2f}"
        lines.append(f"| {name} | {tt} | {tv} | {100 * v['regret']:.2f} | {v['picked']} |")
    png = path.with_suffix(".png").name
    lines += ["", f"![reward vs fine-tuned accuracy](../benchmarks/results/{png})", ""]
    lines.append(_prov(doc, path))
    return "\n".join(lines)


def compare(path: Path) -> str:
    doc = json.loads(path.read_text())
    runs = doc["runs"]
    targets = sorted({r["target"] for r in runs}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        f"Teacher test accuracy {100 * doc['teacher_test']:.2f} %; seeds {seeds}.",
        "",
        "| method | "
        + " | ".join(f"{t} MACs: test % mean (range), n" for t in targets)
        + " | compute per plan (mean): evaluations, search s, pick steps / s, fine-tune s |",
        "|---" * (len(targets) + 2) + "|",
    ]
    for m in methods:
        cells, rows = [], [r for r in runs if r["method"] == m]
        for t in targets:
            v = [100 * r["ft_test"] for r in rows if r["target"] == t]
            cells.append(
                f"{statistics.mean(v):.2f} ({min(v):.2f}-{max(v):.2f}), {len(v)}" if v else "-"
            )
        ev = statistics.mean(r["evaluations"] for r in rows)
        ss = statistics.mean(r["search_s"] for r in rows)
        ft = statistics.mean(r["ft_s"] for r in rows)
        pk = (
            f"{statistics.mean(r['pick_steps'] for r in rows):.0f} / "
            f"{statistics.mean(r['pick_s'] for r in rows):.0f}"
            if "pick_s" in rows[0]
            else "-"
        )
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {ev:.0f}, {ss:.0f}, {pk}, {ft:.0f} |")
    lines.append("")
    lines.append("Pick minus uniform, per seed (points of test accuracy after fine-tuning):")
    lines.append("")
    for t in targets:
        by = {(r["method"], r["seed"]): r["ft_test"] for r in runs if r["target"] == t}
        d = [
            100 * (by[("pick", s)] - by[("uniform", s)])
            for s in seeds
            if ("pick", s) in by and ("uniform", s) in by
        ]
        taus = [r["tau"] for r in runs if r["target"] == t and r["method"] == "pick"]
        tau_text = ", ".join("n/a" if x is None else f"{x:+.2f}" for x in taus)
        if d:
            lines.append(
                f"- {t} of the MACs: {', '.join(f'{x:+.2f}' for x in d)} (mean "
                f"{statistics.mean(d):+.2f}); the pick's Kendall tau per seed: {tau_text}"
            )
    lines += ["", _prov(doc, path)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fidelity", type=Path, action="append", default=[])
    p.add_argument("--compare", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    parts = []
    for f in args.fidelity:
        target = json.loads(f.read_text())["args"]["target"]
        parts += [f"### Reward fidelity at {target} of the MACs", "", fidelity(f), ""]
    if args.compare is not None:
        parts += ["### After fine-tuning: the methods' plans", "", compare(args.compare), ""]
    block = "\n".join([START, "", *parts, END])
    text = args.out.read_text() if args.out.is_file() else f"{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    write_bytes(args.out, (head + block + tail).encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
