"""Compress a model from a deployment script: train a small VGG-16 on the bundled digits,
then search, prune, distil, export and report with one call.

    python examples/compress_digits.py [OUT]
"""

import sys

import torch

import qmixprune
from qmixprune.data import load_data
from qmixprune.distill import DistillConfig
from qmixprune.models import create
from qmixprune.run.config import CompressConfig
from qmixprune.search import SearchConfig
from qmixprune.train import TrainConfig, train

out = sys.argv[1] if len(sys.argv) > 1 else "example-out"
torch.manual_seed(0)
data = load_data("digits", seed=0)
model = train(create("vgg16", width=0.5), data.train, TrainConfig(epochs=4), hflip=False)

config = CompressConfig(search=SearchConfig(episodes=40), distill=DistillConfig(epochs=4))
result = qmixprune.compress(model, data, target_flops=0.4, config=config, out=out)
print(result.original, result.pruned, sep="\n")

small = qmixprune.load(f"{out}/model.safetensors")  # no pickle involved
print(qmixprune.count(small, torch.zeros(1, 3, 32, 32)))
