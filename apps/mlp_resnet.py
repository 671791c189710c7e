"""Course hw2 entry points: ResidualBlock, MLPResNet, epoch, train_mnist (thin wrappers)."""
import os
import sys

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import numpy as np  # noqa: E402

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402,F401  (course skeleton name)
from needle.models import MLPResNet, ResidualBlock  # noqa: E402
from needle.train import ClassificationTask, Trainer  # noqa: E402

__all__ = ["ResidualBlock", "MLPResNet", "epoch", "train_mnist"]


def epoch(dataloader, model, opt=None):
    """One pass over `dataloader`: trains (model.train(), a step per batch) when `opt` is
    given, else evaluates (model.eval()). Returns (error rate, mean loss per sample)."""
    np.random.seed(4)
    trainer = Trainer(model, opt, ClassificationTask(), dataloader, dataloader)
    metrics = trainer.train_epoch() if opt is not None else trainer.evaluate()
    return 1.0 - metrics["accuracy"], metrics["loss"]


def train_mnist(batch_size=100, epochs=10, optimizer=ndl.optim.Adam, lr=0.001,
                weight_decay=0.001, hidden_dim=100, data_dir="data"):
    """Train MLPResNet(784, hidden_dim) on MNIST in `data_dir`; returns the last epoch's
    (train_err, train_loss, test_err, test_loss)."""
    np.random.seed(4)
    train_set = ndl.data.MNISTDataset(os.path.join(data_dir, "train-images-idx3-ubyte.gz"),
                                      os.path.join(data_dir, "train-labels-idx1-ubyte.gz"))
    test_set = ndl.data.MNISTDataset(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"),
                                     os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"))
    train_loader = ndl.data.DataLoader(train_set, batch_size, shuffle=True)
    test_loader = ndl.data.DataLoader(test_set, batch_size)
    model = MLPResNet(784, hidden_dim)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        train_err, train_loss = epoch(train_loader, model, opt)
    test_err, test_loss = epoch(test_loader, model)
    return train_err, train_loss, test_err, test_loss


if __name__ == "__main__":
    print(train_mnist(data_dir="../data"))
