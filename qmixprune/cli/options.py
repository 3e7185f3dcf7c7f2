"""Command-line options: the ones generated from the config dataclasses, and the shared
groups (model, data, run) of the commands.

A config option's flag, type, help and default come from its dataclass field (the help is
the comment on the field's line, as in the generated reference), so a default lives in one
place: the flag's own default is None ("not given"), and the config it overrides is layered
as defaults <- ``--preset`` <- ``--config`` file <- flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

DATASETS = ("digits", "cifar10", "cifar100", "fashion-mnist", "mnist", "imagefolder")
IMPORTANCES = ("l1", "l2", "fpgm", "bn_scale", "random")


@dataclass(frozen=True)
class Option:
    """One command-line flag for one config key (dotted, from the command's config class)."""

    key: str
    flag: str = ""  # default: --KEY's last part, dashed
    negate: bool = False  # a bool defaulting to True: --no-X sets it False
    help: str = ""  # default: the field's comment

    def name(self) -> str:
        return self.flag or "--" + self.key.rsplit(".", 1)[-1].replace("_", "-")

    def dest(self) -> str:
        return self.name().lstrip("-").replace("-", "_")


# The options of `search` (keys of SearchConfig) and of `compress` (keys of CompressConfig).
SEARCH_OPTIONS = (
    Option("env.target_flops"),
    Option("env.target_latency", help="fraction of the measured latency kept (--latency-table)"),
    Option("episodes"),
    Option("envs"),
    Option("max_evaluations"),
    Option("patience"),
    Option("env.steps"),
    Option("env.round_to"),
    Option("env.min_channels"),
    Option("env.reward", "--reward"),
    Option("seed"),
)
COMPRESS_OPTIONS = (
    Option("target_flops"),
    Option("target_latency"),
    Option("plan"),
    Option("pick.enabled", "--no-pick", negate=True, help="fine-tune the search's best plan"),
    Option("pick.top_k", "--pick-top-k"),
    Option("pick.steps", "--pick-steps"),
    Option("search.episodes"),
    Option("search.envs"),
    Option("search.max_evaluations"),
    Option("search.patience"),
    Option("search.env.steps"),
    Option("search.env.round_to"),
    Option("search.env.min_channels"),
    Option("search.env.reward", "--reward"),
    Option("seed"),
    Option("distill.epochs"),
    Option("export", "--no-export", negate=True, help="skip ONNX export and latency"),
    Option("int8"),
    Option("distill.amp", "--no-amp", negate=True, help="full-precision fine-tuning on CUDA"),
    Option("allow_untrained"),
    Option("keep_checkpoints"),
)


def field_of(cls: type, key: str) -> tuple[dataclasses.Field, Any, type]:
    """The dataclass field at dotted ``key`` below ``cls``, its type hint and its class."""
    *path, last = key.split(".")
    for part in path:
        cls = typing.get_type_hints(cls)[part]
    field = {f.name: f for f in dataclasses.fields(cls)}[last]
    return field, typing.get_type_hints(cls)[last], cls


def default_of(cls: type, key: str) -> Any:
    """The dataclass default of dotted ``key`` (what applies when nothing sets it)."""
    value = cls()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def add_config_options(p: argparse.ArgumentParser, cls: type, options) -> None:
    """``options`` as flags of ``p``, typed and explained by ``cls``'s fields."""
    from ..config import field_comments

    group = p.add_argument_group("run options (also settable in --config)")
    for opt in options:
        field, hint, owner = field_of(cls, opt.key)
        text = opt.help or field_comments(owner).get(field.name, "")
        kind = _scalar(hint)
        if kind is bool:
            group.add_argument(opt.name(), dest=opt.dest(), action="store_true", help=text)
        else:
            group.add_argument(opt.name(), dest=opt.dest(), type=kind, help=text)
    p.set_defaults(_config_options=(cls, options))


def config_layer(args: argparse.Namespace) -> dict:
    """The config values given as flags, as a nested mapping (None: not given)."""
    cls, options = args._config_options
    out: dict = {}
    for opt in options:
        value = getattr(args, opt.dest())
        if isinstance(value, bool):  # store_true: only a given flag says something
            value = (not value if opt.negate else value) if value else None
        node = out
        *path, last = opt.key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _scalar(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if args else hint
    return hint if hint in (int, float, bool, str) else str


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` gives every option's default: argparse's own, or for config options the
    dataclass's (what applies when neither --config nor --preset sets it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.help is argparse.SUPPRESS or "default" in text or not action.option_strings:
            return text
        key = self._config_key(action)
        if key is not None:
            cls, opt = key
            if isinstance(action, argparse._StoreTrueAction):
                return text
            value = default_of(cls, opt.key)
            value = "none" if value is None else str(value).replace("%", "%%")
            return f"{text} (default: {value} unless --config or --preset sets it)"
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"

    def _config_key(self, action: argparse.Action):
        for cls, options in getattr(self, "_config", ()):
            for opt in options:
                if opt.dest() == action.dest:
                    return cls, opt
        return None


def formatter_for(cls: type | None = None, options=()) -> type:
    """A HelpFormatter class that knows ``cls``'s option defaults."""

    class Formatter(HelpFormatter):
        _config = ((cls, options),) if cls is not None else ()

    return Formatter


def model_args(sp: argparse.ArgumentParser) -> None:
    """MODEL and how to read it."""
    sp.add_argument(
        "model",
        help="model file (ours, a state dict with --arch, TorchScript) or a built-in name "
        "(vgg16, alexnet, resnet56, torchvision:NAME, timm:NAME)",
    )
    sp.add_argument("--arch", help="architecture of a state-dict file")
    sp.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classifier outputs of a built-in or --arch model (default: 10)",
    )
    sp.add_argument(
        "--width", type=float, default=1.0, help="channel multiplier of the built-in models"
    )
    sp.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input side in pixels, as the model was trained (default: the size the "
        "model file records, else 224 for torchvision:/timm: models, else 32); imagefolder "
        "images are resized to it",
    )
    sp.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled nn.Module or a TorchScript archive (both run code "
        "from the file)",
    )
    sp.add_argument(
        "--model-factory",
        metavar="PKG.MODULE:FUNCTION",
        help="your own model class: a function returning the unpruned model, whose "
        "state dict or pruned qmixprune file MODEL holds (imports and runs that code)",
    )


def data_args(sp: argparse.ArgumentParser) -> None:
    """The data set and how the model was fed."""
    sp.add_argument(
        "--data",
        default="digits",
        choices=DATASETS,
        help="data set (digits: embedded, 32x32; cifar10/100; fashion-mnist/mnist: idx files, "
        "28 px padded to 32; imagefolder: one sub-folder per class, train/ + test/ or one "
        "tree split 80/20)",
    )
    sp.add_argument(
        "--data-dir",
        help="where the data set lies (or is downloaded to); fashion-mnist/mnist: default the "
        "Debian package's folder (apt-get install dataset-fashion-mnist), or torchvision's ROOT",
    )
    sp.add_argument("--download", action="store_true", help="fetch CIFAR if missing")
    sp.add_argument(
        "--mean",
        help="per-channel mean the model was trained with: 3 (or 1) comma-separated numbers "
        "or a preset: imagenet, cifar10, cifar100, half, none (default: the data set's own; "
        "ImageNet's for imagefolder)",
    )
    sp.add_argument(
        "--std",
        help="per-channel std, as --mean (a preset name in --mean sets both)",
    )


def run_args(sp: argparse.ArgumentParser) -> None:
    """What a search or compress run reads besides its model and data, and its OUT."""
    sp.add_argument("--config", help="YAML or JSON file with any of the options")
    sp.add_argument("--latency-table", help="table from `qmixprune profile`")
    sp.add_argument("--resume", action="store_true", help="continue an interrupted run")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sp.add_argument("--quiet", action="store_true", help="no progress display")
    sp.add_argument("-o", "--output", required=True, help="output folder")


def device_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--device",
        metavar="auto|cpu|cuda|cuda:N",
        help="where torch runs (default auto: the local GPU when one is visible, under "
        "torchrun cuda:$LOCAL_RANK, else the CPU)",
    )
