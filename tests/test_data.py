import pickle

import numpy as np
import pytest
import torch

from qmixprune.data import load_data
from qmixprune.errors import UserError


def test_digits_splits_are_disjoint_and_seeded():
    a = load_data("digits", seed=0)
    b = load_data("digits", seed=0)
    c = load_data("digits", seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (1151, 287, 359)
    assert a.val.indices == b.val.indices != c.val.indices
    assert not set(a.train.indices) & set(a.val.indices)
    x, y = a.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= int(y) < 10
    assert a.num_classes == 10 and not a.hflip


def write_fake_cifar(root, name="cifar10", n=20):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        base, files, key = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "labels",
        )
        files.append("test_batch")
        classes = 10
    else:
        base, files, key, classes = root / "cifar-100-python", ["train", "test"], "fine_labels", 100
    base.mkdir(parents=True)
    for f in files:
        d = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: rng.integers(0, classes, n).tolist(),
        }
        (base / f).write_bytes(pickle.dumps(d))
    return base


@pytest.mark.parametrize("name,n_train", [("cifar10", 100), ("cifar100", 20)])
def test_cifar_format(tmp_path, name, n_train):
    write_fake_cifar(tmp_path, name)
    d = load_data(name, data_dir=tmp_path, seed=3)
    assert len(d.train) + len(d.val) == n_train and len(d.test) == 20
    assert d.train[0][0].shape == (3, 32, 32) and d.hflip


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        load_data("cifar10")
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*--download"):
        load_data("cifar10", data_dir=tmp_path)
    base = write_fake_cifar(tmp_path)
    (base / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt CIFAR file .*data_batch_3"):
        load_data("cifar10", data_dir=tmp_path)


def test_cifar_pickle_cannot_run_code(tmp_path):
    base = write_fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (base / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        load_data("cifar10", data_dir=tmp_path)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(folder / f"{i}.png")
    d = load_data("imagefolder", data_dir=tmp_path, image_size=16)
    assert d.num_classes == 2 and len(d.test) == 10 and len(d.train) + len(d.val) == 10
    assert d.train[0][0].shape == (3, 16, 16)
    with pytest.raises(UserError, match="does not exist"):
        load_data("imagefolder", data_dir=tmp_path / "nope")


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown data set"):
        load_data("kmnist")


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if gz:
        import gzip

        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def write_fake_mnist(folder, n_train=30, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        images[:, 0, 0] = 255  # a corner pixel we can find after padding
        write_idx(folder / f"{stem}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", rng.integers(0, 10, n), gz)
    return folder


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_fashion_mnist_idx_files(tmp_path, gz, channels):
    write_fake_mnist(tmp_path, gz=gz)
    d = load_data("fashion-mnist", data_dir=tmp_path, seed=1, channels=channels)
    assert (len(d.train) + len(d.val), len(d.test)) == (30, 10)
    assert d.num_classes == 10 and d.hflip and d.input_shape == (channels, 32, 32)
    x, y = d.test[0]
    assert x.shape == (channels, 32, 32) and 0 <= int(y) < 10
    # 28 px centred in 32: a 2-pixel border of zeros (after normalisation: -mean/std)
    raw = x * torch.tensor(d.std).view(-1, 1, 1) + torch.tensor(d.mean).view(-1, 1, 1)
    assert raw[:, :2].abs().max() < 1e-6 and raw[:, :, -2:].abs().max() < 1e-6
    assert torch.allclose(raw[:, 2, 2], torch.ones(1), atol=1e-6)  # the marked corner pixel
    assert all(torch.allclose(raw[0], raw[c]) for c in range(channels))
    # the data set's own statistics, from the (padded) training images
    pixels = torch.stack([d.train.dataset.images[i, 0] for i in range(30)]).double() / 255
    assert d.mean[0] == pytest.approx(float(pixels.mean()), abs=1e-6)
    assert d.std[0] == pytest.approx(float(pixels.std(unbiased=False)), abs=1e-6)


def test_mnist_torchvision_layout(tmp_path):
    write_fake_mnist(tmp_path / "MNIST" / "raw", gz=False)
    d = load_data("mnist", data_dir=tmp_path)
    assert len(d.test) == 10 and not d.hflip


def test_idx_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.*FashionMNIST/raw.*apt-get"):
        load_data("fashion-mnist", data_dir=tmp_path)
    folder = write_fake_mnist(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
        load_data("fashion-mnist", data_dir=tmp_path)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x0a" + bytes(3))
    with pytest.raises(UserError, match="corrupt idx file .*t10k-labels.*10.*3 bytes"):
        load_data("fashion-mnist", data_dir=tmp_path)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match="bad magic number"):
        load_data("fashion-mnist", data_dir=tmp_path)


def test_idx_default_folder_missing(monkeypatch):
    import qmixprune.data as data

    monkeypatch.setitem(data._IDX, "mnist", ("dataset-mnist", "/nonexistent/mnist", "MNIST", False))
    with pytest.raises(UserError, match="apt-get install dataset-mnist"):
        load_data("mnist")


def test_from_datasets_takes_plain_datasets():
    from torch.utils.data import TensorDataset

    from qmixprune.data import DataSplits

    x = torch.randn(12, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3] * 3)
    ds = TensorDataset(x, y)
    d = DataSplits.from_datasets(ds, ds, TensorDataset(x[:2], torch.tensor([5, 0])))
    assert d.num_classes == 6 and d.input_shape == (1, 8, 8) and not d.hflip
    assert DataSplits.from_datasets(ds, ds, ds, num_classes=10).num_classes == 10
    with pytest.raises(UserError, match="test dataset is empty"):
        DataSplits.from_datasets(ds, ds, TensorDataset(x[:0], y[:0]))


def test_cli_gives_grey_images_the_model_s_input_channels(tmp_path):
    import argparse

    import torch.nn as nn

    from qmixprune.cli.run import load_data as cli_load_data

    write_fake_mnist(tmp_path)
    args = argparse.Namespace(
        data="fashion-mnist",
        data_dir=str(tmp_path),
        download=False,
        mean=None,
        std=None,
        input_size=None,
    )
    one = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    assert cli_load_data(args, 0, one).input_shape == (1, 32, 32)
    assert cli_load_data(args, 0, nn.Sequential(nn.Conv2d(3, 4, 3))).input_shape == (3, 32, 32)
