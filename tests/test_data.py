import os
import pickle
import shlex
import struct
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isnm.data import augmented, load_dataset, train_batches
from isnm.datafiles import DataError, read_digits
from tests.cifar_files import write_fake_cifar


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    assert a.train_x.shape[1:] == (1, 8, 8) and len(a.train_y) + len(a.test_y) == 1797
    train = {tuple(r) for r in a.train_x.flatten(1).tolist()}
    assert not any(tuple(r) in train for r in a.test_x.flatten(1).tolist()[:50])
    assert abs(a.train_x.mean().item()) < 1e-5 and a.num_classes == 10 and not a.augment


def test_digits_are_scikit_learns_own():
    from sklearn.datasets import load_digits

    images, labels = read_digits()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and images.dtype == bunch.images.dtype
    assert np.array_equal(labels, bunch.target) and labels.dtype == bunch.target.dtype


@pytest.mark.parametrize("name, classes, train_files", [("cifar10", 10, 5), ("cifar100", 100, 1)])
def test_cifar_is_read_from_its_on_disk_format(tmp_path, name, classes, train_files):
    write_fake_cifar(tmp_path, name, per_file=6)
    data = load_dataset(name, str(tmp_path))
    assert data.train_x.shape == (6 * train_files, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert data.num_classes == classes and data.augment and data.train_y.dtype == torch.int64


def test_cifar_pixels_keep_their_layout(tmp_path):
    folder = write_fake_cifar(tmp_path, "cifar10", per_file=2)
    import pickle
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0].reshape(3, 32, 32)
    data = load_dataset("cifar10", str(tmp_path))
    red = data.test_x[0, 0] * 0.2470 + 0.4914
    torch.testing.assert_close(red, torch.tensor(raw[0], dtype=torch.float32) / 255, atol=1e-5, rtol=0)


def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=f"not found in {tmp_path}.*download: true"):
        load_dataset("cifar10", str(tmp_path), download=False)


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_validation_split_is_disjoint_fixed_and_taken_from_the_training_set(tmp_path, name):
    write_fake_cifar(tmp_path, "cifar10", per_file=40)
    whole = load_dataset(name, str(tmp_path))
    split = load_dataset(name, str(tmp_path), validation=0.1)
    assert len(whole.val_y) == 0 and len(split.val_y) == round(0.1 * len(whole.train_y))
    assert len(split.train_y) + len(split.val_y) == len(whole.train_y)
    assert torch.equal(split.test_y, whole.test_y)  # the same test set (digits normalize by the images trained on)
    rows = lambda x: {tuple(r) for r in x.flatten(1).tolist()}  # noqa: E731
    train, val, test = rows(split.train_x), rows(split.val_x), rows(split.test_x)
    assert not (val & train) and not (val & test) and not (train & test)
    again = load_dataset(name, str(tmp_path), validation=0.1)
    assert torch.equal(again.val_x, split.val_x)  # the same images in every run


@pytest.mark.parametrize("keep", [0, 100, 5000])
def test_truncated_cifar_file_is_one_clear_line(tmp_path, keep):
    folder = write_fake_cifar(tmp_path, "cifar10", per_file=4)
    data = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(data[:keep])  # EOFError or UnpicklingError, by where it is cut
    with pytest.raises(DataError, match=f"cifar10: cannot read {folder} .*delete it and download again") as info:
        load_dataset("cifar10", str(tmp_path))
    assert "\n" not in str(info.value)


def python2_cifar_batch(pixels: np.ndarray, labels: list[int]) -> bytes:
    """A batch as CIFAR's archive holds it: Python 2's cPickle (protocol 2, str keys) of a numpy 1 array, which
    names numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype."""
    raw = pixels.astype(np.uint8).tobytes()
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"  # an empty array,
             b"(K\x01M" + struct.pack("<H", len(pixels)) + b"M\x00\x0c\x86"  # then its state: shape (n, 3072),
             b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # uint8,
             b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb")  # C order, the pixels
    label_list = b"](" + b"".join(b"K" + bytes([y]) for y in labels) + b"e"
    return b"\x80\x02}(U\x04data" + array + b"U\x06labels" + label_list + b"u."


def test_cifar_files_as_the_official_archive_holds_them_are_read(tmp_path):
    folder = write_fake_cifar(tmp_path, "cifar10", per_file=3)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(python2_cifar_batch(pixels, [7, 0, 9]))
    data = load_dataset("cifar10", str(tmp_path))
    assert data.test_y.tolist() == [7, 0, 9]
    red = data.test_x[:, 0] * 0.2470 + 0.4914
    torch.testing.assert_close(red, torch.tensor(pixels[:, :1024], dtype=torch.float32).view(3, 32, 32) / 255,
                               atol=1e-5, rtol=0)


class Runs:
    """Pickles as a call of `call(*args)`, made when it is loaded: what a planted file would do."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("call", [os.system, subprocess.call])
def test_a_cifar_file_naming_another_global_is_refused_and_nothing_runs(tmp_path, call):
    folder = write_fake_cifar(tmp_path, "cifar10", per_file=2)
    marker = tmp_path / "MARKER"
    command = f"touch {shlex.quote(str(marker))}" if call is os.system else ["touch", str(marker)]
    planted = pickle.dumps({b"data": Runs(call, command), b"labels": [0, 1]})
    (folder / "data_batch_1").write_bytes(planted)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{folder / 'data_batch_1'}: refusing to load '{call.__module__}.{call.__name__}'")
    assert "\n" not in message and not marker.exists()
    pickle.loads(planted)  # the same file, unrestricted, does run its command
    assert marker.exists()


def test_a_download_waits_for_the_one_under_way_and_then_finds_the_files(tmp_path):
    import threading

    from isnm.datafiles import cifar_folder, download_lock

    found = {}
    with download_lock(tmp_path):  # another trial is fetching CIFAR into the shared folder
        waiter = threading.Thread(target=lambda: found.update(folder=cifar_folder("cifar10", str(tmp_path), True)))
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive(), "the second download did not wait for the first"
        write_fake_cifar(tmp_path, "cifar10", per_file=2)
    waiter.join(timeout=30)
    # no download was tried (this machine has no internet: a try would have raised DataError)
    assert found["folder"] == tmp_path / "cifar-10-batches-py"


def test_augmentation_is_a_padded_crop_maybe_flipped():
    x = torch.randn(16, 3, 8, 8)
    out = augmented(x, torch.Generator().manual_seed(0), padding=2)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(16):
        crops = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    assert not torch.equal(out, x)


def test_train_batches_cover_the_set_once_per_epoch(tmp_path):
    data = load_dataset("digits")
    ys = torch.cat([y for _, y in train_batches(data, 100, torch.Generator().manual_seed(0))])
    assert torch.equal(ys.sort().values, data.train_y.sort().values)
