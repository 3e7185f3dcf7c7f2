"""Prune a detector that torch.fx cannot trace whole (SSDlite), save it, and restore it onto
a fresh instance of the same class: the restored model's detections equal the pruned one's.

    python examples/prune_detector.py [OUT_FILE]

The whole SSD cannot be traced (its post-processing loops over detections), so qmixprune
analyses its traceable parts (the backbone and the head's blocks) and leaves the rest, and
every channel between parts, as it is; a warning says so.
"""

import sys
import warnings

import torch
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

import qmixprune


def make() -> torch.nn.Module:
    """The user's unpruned detector (here untrained: no weights can be downloaded)."""
    torch.manual_seed(0)
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "ssdlite-pruned.safetensors"
    model = make().eval()
    image = torch.rand(1, 3, 320, 320)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = qmixprune.analyze(model, image)
    print(caught[0].message if caught else "traced whole")
    print(f"{len(graph.prunable)} of {len(graph.groups)} channel groups prunable")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same warnings as above
        pruned = qmixprune.prune(model, image, 0.3).eval()
        macs = [qmixprune.count(m, image)[0] for m in (model, pruned)]
        print(f"MACs {macs[0] / 1e6:.1f}M -> {macs[1] / 1e6:.1f}M ({macs[1] / macs[0]:.0%} kept)")

        qmixprune.save(pruned, out)
        restored = qmixprune.load(out, model=make())  # a fresh, unpruned instance
        with torch.no_grad():
            a, b = pruned(image)[0], restored(image)[0]
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(f"saved {out}; restored detections equal the pruned model's: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
