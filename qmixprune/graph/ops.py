"""Which ops keep, tie or reduce the channel axis: the tables the analysis consults."""

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Mish,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
)
PASS_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.tanh,
    F.dropout,
    F.dropout2d,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.interpolate,  # resizes H, W only (segmentation decoders, FPNs)
    torch.clone,
    operator.neg,
    torch.neg,
}
PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "clone",
    "contiguous",
    "float",
    "half",
    "to",
    "type_as",
    "neg",
    "detach",
}
BINARY_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
REDUCE = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
SHAPE_ONLY_METHODS = {"size", "dim"}

# The same rules for the ATen ops of a torch.export graph (the fallback capture).
_aten = torch.ops.aten


def _overloads(*names: str) -> set:
    """Every overload of the named ATen ops that this torch has."""
    out = set()
    for name in names:
        packet = getattr(_aten, name, None)
        if packet is not None:
            out.update(getattr(packet, o) for o in packet.overloads())
    return out


PASS_FUNCTIONS |= _overloads(
    "relu",
    "relu_",
    "relu6",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "gelu",
    "gelu_",
    "silu",
    "silu_",
    "mish",
    "mish_",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "hardtanh",
    "hardtanh_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "softplus",
    "neg",
    "dropout",
    "dropout_",
    "feature_dropout",
    "alpha_dropout",
    "clone",
    "contiguous",
    "alias",
    "detach",
    "detach_",
    "_to_copy",
    "to",
    "type_as",
    "max_pool1d",
    "max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "upsample_nearest2d",
    "upsample_bilinear2d",
    "upsample_bicubic2d",
    "upsample_nearest1d",
    "upsample_linear1d",
)
BINARY_FUNCTIONS |= _overloads("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")
REDUCE |= _overloads("mean", "sum", "amax")
SHAPE_ONLY_METHODS |= _overloads("sym_size", "sym_numel", "sym_stride")
CAT = {torch.cat, torch.concat, *_overloads("cat", "concat")}
PERMUTE = {torch.permute, "permute", *_overloads("permute")}
# torch.export writes every view with literal sizes: it may not merge the channel axis
# (the Python code it came from may have had a literal width)
ATEN_VIEWS = _overloads("view", "reshape", "_unsafe_view")
FLATTEN = {torch.flatten, "flatten", "view", "reshape", *_overloads("flatten"), *ATEN_VIEWS}
# splitting the channel axis: chunk cuts equal pieces the pruned model cuts alike;
# the others carry literal sizes the pruned model would still use
CHUNK = {torch.chunk, "chunk", *_overloads("chunk")}
SPLIT = {torch.split, "split", *_overloads("split", "split_with_sizes", "unsafe_split")}
# indexing along one axis (the channel axis blocks: literal bounds)
SLICE = {torch.narrow, "narrow", *_overloads("slice", "narrow", "select")}
SLICE_WHOLE = _overloads("slice")  # (x, dim, start, end, step): may take the channels whole
