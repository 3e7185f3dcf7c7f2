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
        load_data("mnist")
