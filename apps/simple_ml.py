"""Course entry points (hw1, hw4) built on needle; tests import them with `*`."""
import os
import sys

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import numpy as np  # noqa: E402

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402,F401
from needle.data import parse_mnist  # noqa: E402

__all__ = ["parse_mnist", "softmax_loss", "nn_epoch", "loss_err"]


# ---- hw1 ------------------------------------------------------------------------------------

def softmax_loss(Z, y_one_hot):
    """Mean over rows of log(sum(exp(Z))) - sum(Z * y_one_hot); Z, y_one_hot Tensors (B, K)."""
    lse = ndl.ops.logsumexp(Z, axes=(1,))
    picked = ndl.ops.summation(Z * y_one_hot, axes=(1,))
    return ndl.ops.summation(lse - picked) / Z.shape[0]


def nn_epoch(X, y, W1, W2, lr=0.1, batch=100):
    """One epoch of minibatch SGD, in data order, on logits = relu(X W1) W2.

    X (N, d) and y (N,) are NumPy arrays; W1 (d, h) and W2 (h, k) Tensors. Returns the new
    (W1, W2) as Tensors.
    """
    k = W2.shape[1]
    eye = np.eye(k, dtype=np.float32)
    for start in range(0, X.shape[0], batch):
        Xb = ndl.Tensor(X[start:start + batch], requires_grad=False)
        Yb = ndl.Tensor(eye[y[start:start + batch]], requires_grad=False)
        loss = softmax_loss(ndl.relu(Xb @ W1) @ W2, Yb)
        loss.backward(create_graph=False)
        W1 = ndl.Tensor(W1.realize_cached_data() - lr * W1.grad.realize_cached_data())
        W2 = ndl.Tensor(W2.realize_cached_data() - lr * W2.grad.realize_cached_data())
    return W1, W2


def loss_err(h, y):
    """(softmax loss, error rate) of logits Tensor h against NumPy labels y."""
    y_one_hot = np.zeros((y.shape[0], h.shape[-1]), dtype=np.float32)
    y_one_hot[np.arange(y.size), y] = 1
    y_ = ndl.Tensor(y_one_hot, requires_grad=False)
    return softmax_loss(h, y_).numpy(), np.mean(h.numpy().argmax(axis=1) != y)


# ---- hw4: CIFAR-10 (epoch_general_cifar10, train_cifar10, evaluate_cifar10) -------------------
# The hw4 convolutional training loops (needle.train.conv).
from needle.train.conv import (  # noqa: E402,F401
    epoch_general_cifar10, evaluate_cifar10, train_cifar10,
)

__all__ += ["epoch_general_cifar10", "train_cifar10", "evaluate_cifar10"]


# ---- hw4: PTB language models (epoch_general_ptb, train_ptb, evaluate_ptb) --------------------
# The hw4 language-model training loops (needle.train.lm).
from needle.train.lm import epoch_general_ptb, evaluate_ptb, train_ptb  # noqa: E402,F401

__all__ += ["epoch_general_ptb", "train_ptb", "evaluate_ptb"]
