"""needle.data: IDX/CIFAR readers against files written here, transforms and loader order
against replays of numpy's global RNG, DistributedSampler shards."""
import gzip
import os
import pickle
import struct
import time

import numpy as np
import pytest

from needle import backend_ndarray as nd
from needle import data as ndata
from needle.autograd import Tensor


# ---- helpers: write real-format files -----------------------------------------------------
def write_idx(path, array, magic=None, gz=True, truncate=0):
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x800 | array.ndim
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    if truncate:
        raw = raw[:-truncate]
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(raw)
    return str(path)


def write_mnist(tmp_path, n=7, rows=28, cols=28, seed=0, n_labels=None):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n if n_labels is None else n_labels,), dtype=np.uint8)
    return (write_idx(tmp_path / "img.gz", images), write_idx(tmp_path / "lab.gz", labels),
            images, labels)


def write_cifar_batch(path, data, labels, protocol=2):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"labels": list(map(int, labels)), b"data": data,
                     b"filenames": [b"f"] * len(labels)}, f, protocol=protocol)


def make_cifar(tmp_path, per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch)
        write_cifar_batch(tmp_path / name, data, labels)
        arrays[name] = (data, labels)
    return arrays


# ---- MNIST IDX ------------------------------------------------------------------------------
def test_shipped_mnist_t10k():
    X, y = ndata.parse_mnist(*ndata.shipped_mnist_test())
    assert X.shape == (10000, 784) and X.dtype == np.float32 and y.dtype == np.uint8
    assert X.min() == 0.0 and X.max() == 1.0
    ds = ndata.MNISTDataset(*ndata.shipped_mnist_test())
    assert len(ds) == 10000
    np.testing.assert_allclose(np.linalg.norm(ds[1][0]), 9.857545, rtol=1e-6)
    np.testing.assert_array_equal(ds[:10][1], y[:10])


def test_parse_good_idx(tmp_path):
    img, lab, images, labels = write_mnist(tmp_path, n=5, rows=4, cols=3)
    X, y = ndata.parse_mnist(img, lab)
    assert X.shape == (5, 12) and X.dtype == np.float32
    np.testing.assert_array_equal(X, images.reshape(5, 12).astype(np.float32) / 255)
    np.testing.assert_array_equal(y, labels)


def test_mnist_dataset_indexing(tmp_path):
    img, lab, images, labels = write_mnist(tmp_path, n=9)
    ds = ndata.MNISTDataset(img, lab)
    flat = images.reshape(9, 784).astype(np.float32) / 255
    x0, y0 = ds[3]
    assert x0.shape == (784,) and x0.dtype == np.float32 and y0 == labels[3]
    np.testing.assert_array_equal(ds[2:5][0], flat[2:5])
    idx = np.array([8, 0, 4])
    xs, ys = ds[idx]
    assert xs.shape == (3, 784)
    np.testing.assert_array_equal(xs, flat[idx])
    np.testing.assert_array_equal(ys, labels[idx])
    assert ndata.MNISTDataset(img, lab, flatten=False)[idx][0].shape == (3, 28, 28, 1)


def test_mnist_transforms_see_hwc(tmp_path):
    img, lab, images, _ = write_mnist(tmp_path, n=3)
    seen = []

    def spy(x):
        seen.append(x.shape)
        return x[::-1]  # flip rows

    ds = ndata.MNISTDataset(img, lab, transforms=[spy])
    out = ds[0:2][0]
    assert seen == [(28, 28, 1), (28, 28, 1)]
    np.testing.assert_array_equal(out[1].reshape(28, 28), images[1][::-1] / np.float32(255))


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("not_gzip", "not a gzip file"),
    ("truncated_gzip", "truncated"),
    ("truncated_data", "is truncated"),
    ("trailing", "trailing bytes"),
    ("short_header", "header"),
    ("bad_magic", "magic number 2049, expected 2051"),
])
def test_mnist_corrupt_image_file(tmp_path, case, message):
    _, lab, images, _ = write_mnist(tmp_path, n=4)
    path = tmp_path / "bad-images.gz"
    if case == "not_gzip":
        write_idx(path, images, gz=False)
    elif case == "truncated_gzip":
        write_idx(path, images)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif case == "truncated_data":
        write_idx(path, images, truncate=5)
    elif case == "trailing":
        with gzip.open(path, "wb") as f:
            f.write(struct.pack(">IIII", 2051, 4, 28, 28) + images.tobytes() + b"xx")
    elif case == "short_header":
        with gzip.open(path, "wb") as f:
            f.write(struct.pack(">II", 2051, 4))
    elif case == "bad_magic":
        write_idx(path, images, magic=2049)
    error = FileNotFoundError if case == "missing" else ValueError
    with pytest.raises(error) as info:
        ndata.MNISTDataset(str(path), lab)
    assert str(path) in str(info.value) and message in str(info.value)
    with pytest.raises(error):
        ndata.parse_mnist(str(path), lab)


def test_mnist_count_mismatch(tmp_path):
    img, lab, _, _ = write_mnist(tmp_path, n=4, n_labels=5)
    with pytest.raises(ValueError, match="4 images .* 5 labels") as info:
        ndata.MNISTDataset(img, lab)
    assert img in str(info.value) and lab in str(info.value)


def test_mnist_label_bad_magic(tmp_path):
    img, _, images, _ = write_mnist(tmp_path, n=4)
    bad = write_idx(tmp_path / "labels.gz", images)  # an image file where labels belong
    with pytest.raises(ValueError, match="expected 2049") as info:
        ndata.parse_mnist(img, bad)
    assert bad in str(info.value)


def test_find_fashion_mnist(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        ndata.find_fashion_mnist(str(tmp_path))
    assert str(tmp_path) in str(info.value)
    assert "/usr/share/datasets/fashion-mnist" in str(info.value)
    sub = tmp_path / "fashion-mnist"
    sub.mkdir()
    for name in ndata.paths.FASHION_MNIST_FILES:
        (sub / name).write_bytes(b"")
    found = ndata.find_fashion_mnist(str(tmp_path))
    assert found["train_images"] == str(sub / "train-images-idx3-ubyte.gz")
    assert found["test_labels"] == str(sub / "t10k-labels-idx1-ubyte.gz")


def test_shipped_path_errors():
    assert os.path.isfile(ndata.shipped_path("tinyshakespeare.txt"))
    with pytest.raises(FileNotFoundError, match="no-such-file"):
        ndata.shipped_path("no-such-file")


# ---- CIFAR-10 ------------------------------------------------------------------------------
def test_cifar_reads_real_format(tmp_path):
    arrays = make_cifar(tmp_path)
    train = ndata.CIFAR10Dataset(str(tmp_path), train=True)
    test = ndata.CIFAR10Dataset(str(tmp_path), train=False)
    assert len(train) == 20 and len(test) == 4
    x, y = train[5]  # second item of data_batch_2
    data, labels = arrays["data_batch_2"]
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x, data[1].reshape(3, 32, 32) / np.float32(255))
    assert y == labels[1]
    xs, ys = test[np.array([3, 1])]
    assert xs.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(ys, arrays["test_batch"][1][[3, 1]])


def test_cifar_transforms_chw(tmp_path):
    make_cifar(tmp_path)
    plain = ndata.CIFAR10Dataset(str(tmp_path), train=False)
    flipped = ndata.CIFAR10Dataset(
        str(tmp_path), train=False,
        transforms=[ndata.RandomFlipHorizontal(p=1.0, layout="CHW")])
    np.testing.assert_array_equal(flipped[0][0], plain[0][0][:, :, ::-1])
    assert flipped[0:3][0].shape == (3, 3, 32, 32)


@pytest.mark.parametrize("case, error, message", [
    ("missing", FileNotFoundError, "does not exist"),
    ("truncated", ValueError, "truncated"),
    ("garbled", ValueError, "not a valid pickled batch"),
    ("not_dict", ValueError, "expected a dict"),
    ("no_labels", ValueError, "lacks key"),
    ("bad_shape", ValueError, "(N, 3072)"),
    ("evil", ValueError, "not allowed"),
])
def test_cifar_corrupt_batch(tmp_path, case, error, message):
    make_cifar(tmp_path)
    path = tmp_path / "data_batch_3"
    if case == "missing":
        path.unlink()
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "garbled":
        path.write_bytes(b"\x80\x02garbage" * 10)
    elif case == "not_dict":
        path.write_bytes(pickle.dumps([1, 2, 3]))
    elif case == "no_labels":
        path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    elif case == "bad_shape":
        write_cifar_batch(path, np.zeros((2, 100), np.uint8), [0, 1])
    elif case == "evil":
        path.write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(error) as info:
        ndata.CIFAR10Dataset(str(tmp_path), train=True)
    assert str(path) in str(info.value) and message in str(info.value)


def test_cifar_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ndata.CIFAR10Dataset(str(tmp_path / "nope"), train=True)


# ---- transforms: exact numpy global RNG draws ---------------------------------------------
def test_flip_draws_one_rand_per_call():
    img = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    np.random.seed(7)
    flip = ndata.RandomFlipHorizontal(p=0.5)
    outs = [flip(img) for _ in range(20)]
    np.random.seed(7)
    for out in outs:
        expected = img[:, ::-1] if np.random.rand() < 0.5 else img
        np.testing.assert_array_equal(out, expected)
    assert np.random.rand() == np.random.RandomState(7).rand(21)[-1]


@pytest.mark.parametrize("p", [0, 3, 12, 28])
def test_crop_draws_one_randint_per_call(p):
    img = np.random.RandomState(0).rand(6, 5, 2).astype(np.float32)
    np.random.seed(3)
    crop = ndata.RandomCrop(padding=p)
    outs = [crop(img) for _ in range(20)]
    np.random.seed(3)
    padded = np.pad(img, ((p, p), (p, p), (0, 0)))
    for out in outs:
        r, c = np.random.randint(low=-p, high=p + 1, size=2)
        np.testing.assert_array_equal(out, padded[p + r:p + r + 6, p + c:p + c + 5])
        assert out.shape == img.shape


def test_batched_transforms_match_per_image_stream():
    batch = np.random.RandomState(1).rand(8, 3, 6, 6).astype(np.float32)  # NCHW
    for make in (lambda: ndata.RandomFlipHorizontal(layout="CHW"),
                 lambda: ndata.RandomCrop(2, layout="CHW")):
        np.random.seed(11)
        together = make()(batch)
        np.random.seed(11)
        one_by_one = np.stack([make()(x) for x in batch])
        np.testing.assert_array_equal(together, one_by_one)


def test_normalize_and_compose():
    img = np.random.RandomState(2).rand(4, 4, 3).astype(np.float32)
    norm = ndata.Normalize([0.1, 0.2, 0.3], [0.5, 1.0, 2.0])
    out = norm(img)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (img - [0.1, 0.2, 0.3]) / [0.5, 1.0, 2.0], atol=1e-6)
    chw = ndata.Normalize([0.1, 0.2, 0.3], [0.5, 1.0, 2.0], layout="CHW")
    np.testing.assert_allclose(chw(img.transpose(2, 0, 1)), out.transpose(2, 0, 1), atol=1e-6)
    comp = ndata.Compose([ndata.RandomFlipHorizontal(p=1.0), norm])
    np.testing.assert_allclose(comp(img), norm(img[:, ::-1]), atol=1e-6)
    with pytest.raises(ValueError, match="layout"):
        ndata.RandomCrop(3, layout="WHC")


# ---- DataLoader ----------------------------------------------------------------------------
def _numpy_batches(loader):
    return [tuple(t.numpy() for t in batch) for batch in loader]


def test_loader_yields_tensors_and_short_last_batch():
    X = np.random.RandomState(0).randn(10, 3)  # float64 in, float32 out
    y = np.arange(10)
    loader = ndata.DataLoader(ndata.NDArrayDataset(X, y), batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    xb, yb = batches[0]
    assert isinstance(xb, Tensor) and isinstance(xb.cached_data, nd.NDArray)
    assert xb.dtype == "float32" and not xb.requires_grad
    assert np.dtype(yb.dtype).kind in "iu"
    assert [b[0].shape for b in batches] == [(4, 3), (4, 3), (2, 3)]
    np.testing.assert_allclose(np.concatenate([b[0].numpy() for b in batches]),
                               X.astype(np.float32))
    dropped = ndata.DataLoader(ndata.NDArrayDataset(X, y), batch_size=4, drop_last=True)
    assert len(dropped) == 2 and len(list(dropped)) == 2
    one = list(ndata.DataLoader(ndata.NDArrayDataset(X), batch_size=5))
    assert len(one) == 2 and len(one[0]) == 1  # 1-tuples


def test_loader_shuffle_replays_permutation_per_epoch():
    X = np.arange(23, dtype=np.float32)[:, None]
    loader = ndata.DataLoader(ndata.NDArrayDataset(X, np.arange(23)), batch_size=5,
                              shuffle=True)
    np.random.seed(5)
    epochs = [_numpy_batches(loader) for _ in range(3)]
    np.random.seed(5)
    for batches in epochs:
        order = np.random.permutation(23)
        chunks = [order[i:i + 5] for i in range(0, 23, 5)]
        assert len(batches) == len(chunks)
        for (xb, yb), chunk in zip(batches, chunks):
            np.testing.assert_array_equal(yb, chunk)
            np.testing.assert_array_equal(xb[:, 0], chunk.astype(np.float32))


def test_loader_draws_nothing_without_shuffle():
    np.random.seed(9)
    loader = ndata.DataLoader(ndata.NDArrayDataset(np.zeros((6, 2))), batch_size=4)
    list(loader)
    list(iter(loader))
    assert np.random.rand() == np.random.RandomState(9).rand()


def test_loader_next_protocol_and_restart():
    loader = ndata.DataLoader(ndata.NDArrayDataset(np.arange(6.0)), batch_size=4)
    it = iter(loader)
    np.testing.assert_array_equal(next(it)[0].numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(next(iter(loader))[0].numpy(), [0, 1, 2, 3])  # new epoch


class _ListDataset(ndata.Dataset):
    """A dataset without batch indexing: the loader must fetch item by item."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        assert isinstance(i, int)
        return np.full((2,), i, dtype=np.float64), i


def test_loader_falls_back_to_per_item():
    np.random.seed(0)
    loader = ndata.DataLoader(_ListDataset(7), batch_size=3, shuffle=True)
    batches = _numpy_batches(loader)
    np.random.seed(0)
    order = np.random.permutation(7)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), order)
    assert batches[0][0].dtype == np.float32 and batches[0][0].shape == (3, 2)


def test_loader_mnist_batches_match_dataset_slices():
    ds = ndata.MNISTDataset(*ndata.shipped_mnist_test())
    loader = ndata.DataLoader(ds, batch_size=5)
    for i, (xb, yb) in zip(range(4), loader):
        truth_x, truth_y = ds[i * 5:(i + 1) * 5]
        assert xb.shape == (5, 784) and xb.dtype == "float32"
        np.testing.assert_array_equal(xb.numpy(), truth_x)
        np.testing.assert_array_equal(yb.numpy(), truth_y)


def test_loader_epoch_is_fast():
    X = np.random.RandomState(0).rand(60000, 784).astype(np.float32)
    y = np.random.RandomState(1).randint(0, 10, 60000).astype(np.uint8)
    loader = ndata.DataLoader(ndata.NDArrayDataset(X, y), batch_size=128, shuffle=True)
    start = time.perf_counter()
    n = sum(xb.shape[0] for xb, _ in loader)
    elapsed = time.perf_counter() - start
    assert n == 60000
    assert elapsed < 2.0, f"one epoch took {elapsed:.2f}s in the loader"


def test_loader_argument_errors():
    ds = ndata.NDArrayDataset(np.zeros(4))
    with pytest.raises(ValueError, match="batch_size"):
        ndata.DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="sampler"):
        ndata.DataLoader(ds, shuffle=True, sampler=ndata.DistributedSampler(4, 2, 0))
    with pytest.raises(ValueError, match="same first dimension"):
        ndata.NDArrayDataset(np.zeros(4), np.zeros(5))


# ---- DistributedSampler --------------------------------------------------------------------
@pytest.mark.parametrize("n, replicas", [(20, 4), (23, 4), (5, 2), (3, 5), (1, 1)])
def test_distributed_sampler_shards(n, replicas):
    for epoch in range(3):
        shards = []
        for rank in range(replicas):
            s = ndata.DistributedSampler(n, replicas, rank, seed=3)
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(shards[-1]) == len(s) == -(-n // replicas)
        flat = [i for shard in shards for i in shard]
        assert set(flat) == set(range(n))  # covering
        assert len(flat) - len(set(flat)) == len(flat) - n  # duplicates only from padding
        dropped = [list(ndata.DistributedSampler(n, replicas, r, seed=3, drop_last=True))
                   for r in range(replicas)]
        flat = [i for shard in dropped for i in shard]
        assert len(flat) == len(set(flat)) == (n // replicas) * replicas  # disjoint


def test_distributed_sampler_epochs_and_global_rng():
    np.random.seed(1)
    s = ndata.DistributedSampler(list(range(50)), num_replicas=2, rank=0, seed=4)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(e0) != list(range(0, 50, 2))
    expected = np.random.default_rng(5).permutation(50)[0::2]
    np.testing.assert_array_equal(e1, expected)
    assert np.random.rand() == np.random.RandomState(1).rand()  # global RNG untouched
    assert list(ndata.DistributedSampler(5, 2, 1, shuffle=False)) == [1, 3, 0]
    with pytest.raises(ValueError, match="rank"):
        ndata.DistributedSampler(5, 2, 2)


def test_loader_with_sampler_sets_epochs():
    ds = ndata.NDArrayDataset(np.arange(10.0), np.arange(10))
    sampler = ndata.DistributedSampler(ds, num_replicas=2, rank=1, seed=0)
    loader = ndata.DataLoader(ds, batch_size=2, sampler=sampler)
    assert len(loader) == 3
    np.random.seed(0)
    epochs = [np.concatenate([b[1].numpy() for b in loader]) for _ in range(2)]
    assert np.random.rand() == np.random.RandomState(0).rand()
    for e, got in enumerate(epochs):
        np.testing.assert_array_equal(got, np.random.default_rng(e).permutation(10)[1::2])
    loader.set_epoch(0)
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in loader]), epochs[0])
