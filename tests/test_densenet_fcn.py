"""DenseNet and FCN: output shapes, gradients by central differences on tiny float64
instances, DenseNet's concatenations against PyTorch; ops.concatenate against torch.cat; the
digit-segmentation set and its metrics against their definitions."""
import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle import data, models, ops

RNG = np.random.RandomState(0)


def test_concatenate_matches_torch_cat():
    xs = [RNG.randn(2, c, 3) for c in (1, 4, 2)]
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    ns = [ndl.Tensor(x) for x in xs]
    out, tout = ops.concatenate(ns, 1), torch.cat(ts, 1)
    np.testing.assert_array_equal(out.numpy(), tout.detach().numpy())
    w = RNG.randn(*out.shape)
    (out * ndl.Tensor(w, requires_grad=False)).sum().backward()
    (tout * torch.tensor(w)).sum().backward()
    for n, t in zip(ns, ts):
        np.testing.assert_array_equal(n.grad.numpy(), t.grad.numpy())
    with pytest.raises(ValueError, match="concatenate"):
        ops.concatenate([ns[0], ndl.Tensor(RNG.randn(3, 1, 3))], 1)
    with pytest.raises(ValueError, match="concatenate"):
        ops.concatenate(ns, 3)


def _fd_check(model, x, n_params=6, n_inputs=4, eps=1e-6, seed=1):
    """Central differences of sum(w * model(x)) at a few entries of the input and of the
    parameters, against the backward."""
    rng = np.random.RandomState(seed)
    X = ndl.Tensor(x)
    out = model(X)
    w = ndl.Tensor(rng.randn(*out.shape), requires_grad=False)
    (out * w).sum().backward()

    def f():
        return float((model(ndl.Tensor(x, requires_grad=False)) * w).sum().numpy())

    checks = []
    for _ in range(n_inputs):
        idx = tuple(rng.randint(s) for s in x.shape)
        old = x[idx]
        x[idx] = old + eps
        fp = f()
        x[idx] = old - eps
        fm = f()
        x[idx] = old
        checks.append((X.grad.numpy()[idx], (fp - fm) / (2 * eps)))
    params = model.parameters()
    for k in rng.choice(len(params), size=min(n_params, len(params)), replace=False):
        p = params[k]
        grad = p.grad.numpy()
        value = p.numpy().copy()
        idx = tuple(rng.randint(s) for s in value.shape)
        for sign in (1, -1):
            v = value.copy()
            v[idx] += sign * eps
            p.data = ndl.Tensor(v)
            if sign == 1:
                fp = f()
            else:
                fm = f()
        p.data = ndl.Tensor(value)
        checks.append((grad[idx], (fp - fm) / (2 * eps)))
    analytic, numeric = np.array(checks).T
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_densenet_shapes_and_gradients():
    np.random.seed(0)
    model = models.DenseNet(growth_rate=3, block_config=(2, 2), num_init_features=4,
                            bn_size=2, num_classes=5, dtype="float64")
    # stem 4 -> block 4 + 2*3 = 10 -> transition 5 -> block 5 + 6 = 11
    assert model.num_features == 11
    x = RNG.rand(2, 1, 8, 8)
    assert model(ndl.Tensor(x)).shape == (2, 5)
    _fd_check(model, x)
    assert models.DenseNet()(ndl.Tensor(RNG.rand(2, 1, 28, 28).astype(np.float32))).shape \
        == (2, 10)


def test_dense_block_matches_torch():
    """One dense block, weights copied into an equivalent torch block (torchvision's layer
    order: BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, concatenating every earlier output)."""
    np.random.seed(1)
    block = models.densenet.DenseBlock(3, 4, growth_rate=2, bn_size=2, dtype="float64")

    class TorchLayer(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            c_in, mid = layer.norm1.dim, layer.norm2.dim
            k = layer.conv2.out_channels
            self.n1, self.n2 = torch.nn.BatchNorm2d(c_in).double(), torch.nn.BatchNorm2d(
                mid).double()
            self.c1 = torch.nn.Conv2d(c_in, mid, 1, bias=False).double()
            self.c2 = torch.nn.Conv2d(mid, k, 3, padding=1, bias=False).double()
            with torch.no_grad():
                self.c1.weight.copy_(torch.tensor(layer.conv1.weight.numpy()).permute(3, 2, 0, 1))
                self.c2.weight.copy_(torch.tensor(layer.conv2.weight.numpy()).permute(3, 2, 0, 1))

        def forward(self, x):
            return self.c2(torch.relu(self.n2(self.c1(torch.relu(self.n1(x))))))

    tlayers = [TorchLayer(layer) for layer in block.layers]
    x = RNG.randn(2, 4, 5, 5)
    tx = torch.tensor(x, requires_grad=True)
    feats = [tx]
    for tl in tlayers:
        feats.append(tl(torch.cat(feats, 1)))
    tout = torch.cat(feats, 1)
    X = ndl.Tensor(x)
    out = block(X)
    assert out.shape == (2, 4 + 3 * 2, 5, 5)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    (out * out).sum().backward()
    (tout * tout).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_fcn_shapes_gradients_and_errors():
    assert nn.ConvTranspose2d is nn.ConvTranspose
    np.random.seed(2)
    model = models.FCN(in_channels=1, num_classes=3, width=2, dtype="float64")
    x = RNG.rand(2, 1, 8, 8)
    assert model(ndl.Tensor(x)).shape == (2, 3, 8, 8)
    _fd_check(model, x, n_params=8)
    big = models.FCN()(ndl.Tensor(RNG.rand(1, 1, 28, 28).astype(np.float32)))
    assert big.shape == (1, 11, 28, 28)
    with pytest.raises(ValueError, match="FCN"):
        model(ndl.Tensor(RNG.rand(1, 1, 6, 6)))


def test_digit_segmentation_masks_follow_the_definition():
    ds = data.MNISTSegmentation(stop=50)
    assert len(ds) == 50
    img, mask = ds[3]
    assert img.shape == (1, 28, 28) and img.dtype == np.float32
    assert mask.shape == (28, 28)
    images, labels = data.parse_mnist(*data.shipped_mnist_test())
    raw = images[:50].reshape(50, 28, 28)
    for i in range(50):
        expected = np.zeros((28, 28), dtype=np.int64)
        for r in range(28):
            for c in range(28):
                if raw[i, r, c] > 0.5:
                    expected[r, c] = int(labels[i]) + 1
        np.testing.assert_array_equal(ds.masks[i], expected)
        np.testing.assert_array_equal(ds.images[i, 0], raw[i])
    assert set(np.unique(ds.masks)) <= set(range(11))
    xb, mb = ds[np.array([0, 5])]
    assert xb.shape == (2, 1, 28, 28) and mb.shape == (2, 28, 28)
    loader = data.DataLoader(ds, batch_size=8)
    xt, mt = next(iter(loader))
    assert xt.shape == (8, 1, 28, 28) and mt.shape == (8, 28, 28)


def test_segmentation_metrics_against_definitions():
    rng = np.random.RandomState(3)
    target = rng.randint(0, 4, (3, 6, 6))
    pred = np.where(rng.rand(3, 6, 6) < 0.7, target, rng.randint(0, 4, (3, 6, 6)))
    acc = np.sum([p == t for p, t in zip(pred.ravel(), target.ravel())]) / target.size
    assert data.pixel_accuracy(pred, target) == pytest.approx(acc)
    ious = []
    for c in range(5):  # class 4 occurs nowhere: left out
        inter = np.sum((pred == c) & (target == c))
        union = np.sum((pred == c) | (target == c))
        if union:
            ious.append(inter / union)
    assert data.mean_iou(pred, target, 5) == pytest.approx(np.mean(ious))
    assert data.mean_iou(target, target, 5) == 1.0
    with pytest.raises(ValueError, match="pixel_accuracy"):
        data.pixel_accuracy(pred[:1], target)
    with pytest.raises(ValueError, match="class ids"):
        data.mean_iou(pred + 5, target, 5)
