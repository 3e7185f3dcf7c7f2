"""Data sets: train / val / test splits for ``digits`` (embedded), ``cifar10``,
``cifar100`` (torchvision's on-disk format), ``fashion-mnist`` and ``mnist`` (idx files,
gzipped or not) and ``imagefolder`` (class-per-folder tree); ``DataSplits.from_datasets``
wraps a user's own torch ``Dataset``s.

val is carved from train with a seeded permutation; the search's reward only sees val.
"""

from __future__ import annotations

import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .errors import UserError

DATASETS = ("digits", "cifar10", "cifar100", "fashion-mnist", "mnist", "imagefolder")


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    hflip: bool  # whether horizontal flips are a valid augmentation (not for digits)
    mean: tuple[float, ...] | None = None  # the normalisation applied to every image
    std: tuple[float, ...] | None = None
    norm_source: str = ""  # where mean/std come from, in words (printed and reported)

    @classmethod
    def from_datasets(
        cls,
        train: Dataset,
        val: Dataset,
        test: Dataset,
        num_classes: int | None = None,
        hflip: bool = False,
    ) -> DataSplits:
        """Splits from a user's own ``(image, label)`` datasets, already normalised as the
        model expects. ``num_classes``: default from a ``classes`` attribute of ``train``,
        else the largest label in train, val and test plus one."""
        for name, ds in (("train", train), ("val", val), ("test", test)):
            if len(ds) == 0:
                raise UserError(f"the {name} dataset is empty: give it at least one sample")
        x = train[0][0]
        if not isinstance(x, torch.Tensor):
            raise UserError(
                f"train[0] gives a {type(x).__name__} image: the datasets must give (tensor, "
                "label) pairs (add a ToTensor transform)"
            )
        if num_classes is None:
            classes = getattr(train, "classes", None)
            num_classes = (
                len(classes)
                if classes is not None
                else 1 + max(int(ds[i][1]) for ds in (train, val, test) for i in range(len(ds)))
            )
        return cls(train, val, test, num_classes, tuple(x.shape), hflip, norm_source="given")


class ArrayDataset(Dataset):
    """uint8 images ``[N, C, H, W]`` and labels, normalised on access (fast batched reads)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        self.images, self.labels = images, labels
        self.set_norm(mean, std)

    def set_norm(self, mean, std) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, i):
        return self._norm(self.images[i]), self.labels[i]

    def __getitems__(self, idx: list[int]):
        idx_t = torch.as_tensor(idx)
        return list(zip(self._norm(self.images[idx_t]), self.labels[idx_t]))


def load_data(
    name: str = "digits",
    data_dir: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.2,
    image_size: int = 32,
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    channels: int = 3,
) -> DataSplits:
    """Load a data set by name and split off a seeded validation set from its train part.

    ``norm`` = (mean, std) per channel, as the model was trained with (see
    ``inputs.NORMS``); default: the data set's own statistics (digits, CIFAR), ImageNet's for
    ``imagefolder`` (what torchvision and timm classifiers are trained with).
    ``image_size``: the side ``imagefolder`` images are resized to (digits and CIFAR are 32).
    ``channels``: how many channels the grey (Fashion-)MNIST images are given (the model's
    first convolution's input channels); they are 28 px, padded to 32.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if channels < 1:
        raise UserError(f"channels must be >= 1, got {channels}")
    if image_size < 1:
        raise UserError(f"the input size must be >= 1 pixel, got {image_size}")
    if name == "digits":
        train, test, classes, hflip = _digits()
        source = "digits' own statistics"
    elif name in ("cifar10", "cifar100"):
        train, test, classes, hflip = _cifar(name, _need_dir(name, data_dir), download)
        source = f"{name}'s own statistics"
    elif name in _IDX:
        train, test, classes, hflip = _idx_dataset(name, data_dir, channels)
        source = f"{name}'s own statistics"
    elif name == "imagefolder":
        return _imagefolder(_need_dir(name, data_dir), seed, val_fraction, image_size, norm)
    else:
        raise UserError(f"unknown data set {name!r}; choose one of {list(DATASETS)}")
    if norm is not None:
        for ds in (train, test):
            ds.set_norm(*norm)
        source = "given"
    tr, va = _split(len(train), val_fraction, seed)
    shape = tuple(train[0][0].shape)
    mean, std = (tuple(float(v) for v in t.flatten()) for t in (train.mean, train.std))
    return DataSplits(
        Subset(train, tr), Subset(train, va), test, classes, shape, hflip, mean, std, source
    )


def _need_dir(name: str, data_dir) -> Path:
    if data_dir is None:
        raise UserError(f"data set {name!r} needs --data-dir (where it is, or where to download)")
    return Path(data_dir)


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(n * val_fraction))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _digits():
    """scikit-learn's 1797 8x8 digits, upsampled to 32x32x3; a fixed 20 % test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = _split(len(y), 0.2, seed=0)  # fixed: test accuracy comparable across seeds
    mean, std = x[tr].float().mean() / 255, x[tr].float().std() / 255
    return (
        ArrayDataset(x[tr], y[tr], [mean] * 3, [std] * 3),
        ArrayDataset(x[te], y[te], [mean] * 3, [std] * 3),
        10,
        False,
    )


_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        "test",
        "fine_labels",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}


def _cifar(name: str, root: Path, download: bool):
    folder, train_files, test_file, key, classes, mean, std = _CIFAR[name]
    base = root / folder
    if not base.is_dir():
        if not download:
            raise UserError(
                f"{name} not found: expected {base}/ (torchvision's python format); "
                f"pass --download to fetch it into {root}, or point --data-dir at its parent"
            )
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as exc:
            raise UserError(f"downloading {name} into {root} failed: {exc}") from exc
    xs, ys = zip(*(_cifar_batch(base / f, key, classes) for f in train_files))
    xt, yt = _cifar_batch(base / test_file, key, classes)
    train = ArrayDataset(torch.cat(xs), torch.cat(ys), mean, std)
    return train, ArrayDataset(xt, yt, mean, std), classes, True


# name -> (Debian package and its folder, torchvision's folder under ROOT, hflip valid)
_IDX = {
    "fashion-mnist": (
        "dataset-fashion-mnist",
        "/usr/share/datasets/fashion-mnist",
        "FashionMNIST",
        True,
    ),
    "mnist": ("dataset-mnist", "/usr/share/datasets/mnist", "MNIST", False),
}
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_folder(name: str, data_dir) -> Path:
    """The folder holding ``name``'s four idx files: ``data_dir`` itself or torchvision's
    ``data_dir/NAME/raw``; without ``data_dir``, the Debian package's folder."""
    package, default, tv, _ = _IDX[name]
    if data_dir is None:
        if Path(default).is_dir():
            return Path(default)
        raise UserError(
            f"{name} not found: install it (apt-get install {package}) or pass --data-dir "
            f"(a folder with {_IDX_FILES[0]}.gz and the other idx files, or torchvision's "
            f"ROOT with ROOT/{tv}/raw)"
        )
    root = Path(data_dir)
    for folder in (root, root / tv / "raw"):
        if _idx_path(folder, _IDX_FILES[0]) is not None:
            return folder
    raise UserError(
        f"{name} not found in {root}: expected {_IDX_FILES[0]}[.gz] (and the other three idx "
        f"files) there or in {root / tv / 'raw'} (torchvision's layout); apt-get install "
        f"{package} puts them in {default}"
    )


def _idx_path(folder: Path, stem: str) -> Path | None:
    for p in (folder / f"{stem}.gz", folder / stem):
        if p.is_file():
            return p
    return None


def read_idx(path: Path) -> torch.Tensor:
    """An idx file of unsigned bytes (gzipped or not) as a uint8 tensor of its shape."""
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise UserError(f"corrupt idx file {path}: {exc}; reinstall or re-download it") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"{path} is not an idx file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(shape)):
        raise UserError(
            f"corrupt idx file {path}: header says {shape}, {len(raw) - start} bytes follow"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=start).copy()).view(shape)


def _idx_dataset(name: str, data_dir, channels: int):
    folder = _idx_folder(name, data_dir)
    arrays = []
    for stem in _IDX_FILES:
        path = _idx_path(folder, stem)
        if path is None:
            raise UserError(f"missing {stem}[.gz] in {folder}: the {name} folder is incomplete")
        arrays.append(read_idx(path))
    x_tr, y_tr, x_te, y_te = arrays
    for x, y, what in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
            raise UserError(
                f"{name} in {folder}: {what} images {tuple(x.shape)} do not match labels "
                f"{tuple(y.shape)}"
            )
        if len(y) and int(y.max()) > 9:
            raise UserError(f"{name} in {folder}: {what} labels outside 0..9")
    x_tr, x_te = _pad_to_32(x_tr, channels), _pad_to_32(x_te, channels)
    mean, std = _pixel_stats(x_tr[:, 0])
    ds = [
        ArrayDataset(x, y.long(), [mean] * channels, [std] * channels)
        for x, y in ((x_tr, y_tr), (x_te, y_te))
    ]
    return ds[0], ds[1], 10, _IDX[name][3]


def _pad_to_32(x: torch.Tensor, channels: int) -> torch.Tensor:
    """28 px images centred in 32 px (the CIFAR models' input), one channel per model input
    channel (a view: the grey image is stored once)."""
    pad = max(0, 32 - x.shape[-1])
    x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return x[:, None].expand(-1, channels, -1, -1)


def _pixel_stats(x: torch.Tensor) -> tuple[float, float]:
    """Mean and std of uint8 pixels in [0, 1], from their histogram (no float copy)."""
    hist = torch.bincount(x.reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    n = hist.sum()
    mean = float((hist * values).sum() / n)
    var = float((hist * (values - mean) ** 2).sum() / n)
    return mean, max(var, 1e-12) ** 0.5


class _ArraysOnly(pickle.Unpickler):
    """CIFAR batches are pickles; allow only what rebuilds numpy arrays, nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(path: Path, key: str, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"missing CIFAR file {path}: re-download with --download")
    try:
        d = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d[key], dtype=np.int64)
    except Exception as exc:
        raise UserError(f"corrupt CIFAR file {path}: {exc}; delete it and re-download") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(
            f"corrupt CIFAR file {path}: data of shape {data.shape}, {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise UserError(f"corrupt CIFAR file {path}: labels outside 0..{classes - 1}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _check_image(path: str) -> None:
    from PIL import Image

    try:
        with Image.open(path):  # reads the header, not the pixels
            pass
    except Exception as exc:
        raise UserError(f"{path} is not an image PIL can read ({exc}): remove it") from exc


def _read_image(path: str):
    """ImageFolder's loader, with a damaged image (truncated after a valid header) named in
    one line instead of failing deep inside a DataLoader."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:
        raise UserError(f"{path} is not an image PIL can read ({exc}): remove it") from exc


def _imagefolder(root: Path, seed: int, val_fraction: float, size: int, norm) -> DataSplits:
    """``root/train`` + ``root/test`` (or ``root/val``) if present, else one tree split 80/20."""
    import torchvision
    from torchvision import transforms as T

    from .inputs import NORMS

    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    source = "given" if norm is not None else "ImageNet statistics, the imagefolder default"
    mean, std = norm if norm is not None else NORMS["imagenet"]
    tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(list(mean), list(std))])

    def folder(p: Path):
        try:
            ds = torchvision.datasets.ImageFolder(str(p), transform=tf, loader=_read_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"{p}: {exc} (expected one sub-folder of images per class)") from exc
        for path, _ in ds.samples:  # headers only: a non-image is found now, not mid-run
            _check_image(path)
        return ds

    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train, test = folder(root / "train"), folder(test_dir)
        if train.classes != test.classes:
            raise UserError(f"{root}: train and {test_dir.name} have different class folders")
    else:
        whole = folder(root)
        rest, te = _split(len(whole), 0.2, seed=0)
        train, test = Subset(whole, rest), Subset(whole, te)
        train.classes = whole.classes
    tr, va = _split(len(train), val_fraction, seed)
    classes = len(train.classes)
    return DataSplits(
        Subset(train, tr),
        Subset(train, va),
        test,
        classes,
        (3, size, size),
        True,
        tuple(mean),
        tuple(std),
        source,
    )
