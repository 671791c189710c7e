"""apps/simple_ml.py (hw1) and apps/mlp_resnet.py (hw2): course signatures and golden numbers."""
import os

import numpy as np
import pytest
import torch

import needle as ndl
from needle.data import DataLoader, MNISTDataset, shipped_mnist_test

import mlp_resnet
import simple_ml


def test_star_exports():
    assert set(simple_ml.__all__) >= {"parse_mnist", "softmax_loss", "nn_epoch", "loss_err"}
    assert set(mlp_resnet.__all__) == {"ResidualBlock", "MLPResNet", "epoch", "train_mnist"}
    from apps import mlp_resnet as pkg_module  # apps imports as a package too
    assert pkg_module.MLPResNet is not None


def test_epoch_golden_eval():
    np.random.seed(1)
    model = mlp_resnet.MLPResNet(784, 10)
    loader = DataLoader(MNISTDataset(*shipped_mnist_test()), batch_size=100)
    err, loss = mlp_resnet.epoch(loader, model)
    assert err == pytest.approx(0.9164, abs=1e-4)
    assert loss == pytest.approx(4.137814, rel=1e-5)


def test_epoch_trains_and_train_mnist(tmp_path):
    images, labels = shipped_mnist_test()
    for split in ("train", "t10k"):
        os.symlink(images, tmp_path / f"{split}-images-idx3-ubyte.gz")
        os.symlink(labels, tmp_path / f"{split}-labels-idx1-ubyte.gz")
    train_err, train_loss, test_err, test_loss = mlp_resnet.train_mnist(
        batch_size=100, epochs=2, hidden_dim=100, data_dir=str(tmp_path))
    # measured: (0.0965, 0.3147, 0.0551, 0.1830); the test split equals the train split here
    assert train_err < 0.15 and test_err < 0.1
    assert test_loss < train_loss


def test_parse_mnist_and_loss_err():
    X, y = simple_ml.parse_mnist(*shipped_mnist_test())
    assert X.shape == (10000, 784) and X.dtype == np.float32 and y.dtype == np.uint8
    assert np.linalg.norm(X[1]) == pytest.approx(9.857545, rel=1e-6)
    z = np.random.RandomState(0).randn(50, 10).astype(np.float32)
    loss, err = simple_ml.loss_err(ndl.Tensor(z), y[:50])
    tloss = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(y[:50]).long())
    assert float(loss) == pytest.approx(tloss.item(), rel=1e-5)
    assert err == pytest.approx(np.mean(z.argmax(1) != y[:50]))


def test_nn_epoch_matches_numpy_replica():
    X, y = simple_ml.parse_mnist(*shipped_mnist_test())
    X, y = X[:300], y[:300]
    rng = np.random.RandomState(2)
    W1 = (rng.randn(784, 20) / np.sqrt(20)).astype(np.float32)
    W2 = (rng.randn(20, 10) / np.sqrt(10)).astype(np.float32)
    w1, w2 = W1.astype(np.float64), W2.astype(np.float64)
    for s in range(0, 300, 100):
        xb, yb = X[s:s + 100], y[s:s + 100]
        h = np.maximum(xb @ w1, 0)
        z = h @ w2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(100), yb] -= 1
        g2 = h.T @ p / 100
        g1 = xb.T @ ((p @ w2.T) * (h > 0)) / 100
        w1, w2 = w1 - 0.1 * g1, w2 - 0.1 * g2
    n1, n2 = simple_ml.nn_epoch(X, y, ndl.Tensor(W1), ndl.Tensor(W2), lr=0.1, batch=100)
    np.testing.assert_allclose(n1.numpy(), w1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(n2.numpy(), w2, rtol=1e-4, atol=1e-5)
