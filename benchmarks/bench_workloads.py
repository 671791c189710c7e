"""needle vs PyTorch (CPU) on the four training workloads of issue 12, side by side in one run.

Workloads (`--workload mlp|cnn|lstm|transformer|all`):
  mlp          MLPResNet(784, 100, 3 blocks, BatchNorm1d, dropout 0.1) (`needle.models`) on
               Fashion-MNIST, batch 128, Adam lr 1e-3 weight decay 1e-3; by default one epoch of
               468 steps, the first 5 untimed; samples/s.
  cnn          ConvBN(1->16) -> ConvBN(16->32, s2) -> x + ConvBN(32->32)(ConvBN(32->32)(x)) ->
               ConvBN(32->64, s2) -> mean over H, W -> Linear(64, 10), ConvBN = 3x3 conv with
               bias and padding 1, BatchNorm2d, ReLU; Fashion-MNIST, batch 64, SGD lr 0.05
               momentum 0.9; samples/s. Written with `nn.Conv` (NCHW) as a course user would.
  lstm         Embedding(10000, 256) -> 2-layer LSTM(256) -> Linear(256, 10000)
               (`needle.models.LanguageModel`), T=35, B=32, zero initial state every step, SGD
               lr 1.0; tokens/s. Token ids are random (uniform over the vocabulary).
  transformer  token + learned position embeddings (d=256, T=128, B=16, vocabulary 10000), 2
               pre-LayerNorm blocks, 4 heads as matmul -> softmax -> matmul with an additive
               causal mask (no fused attention op), MLP 256->1024->256 with ReLU, final LayerNorm,
               Linear(256, 10000); Adam lr 1e-3; tokens/s; random token ids. Written in this file
               from nn.Linear, nn.LayerNorm1d, nn.Embedding, ops.softmax, matmul, reshape and
               permute; the PyTorch twin is written the same way (not nn.MultiheadAttention).

Every timed step makes Tensors from the NumPy batch, zeroes the gradients, runs forward, the
loss, `loss.backward()`, the optimizer step, and reads the loss back as a Python float. Both
frameworks start from the same initial weights (needle's, copied into torch; needle's Linear
weights are (in, out)) and see the same batches. Each run builds fresh models from seed 0.

needle modes: `default` (`loss.backward()`, the graph-building course default), `fast`
(`loss.backward(create_graph=False)`) and `compiled` (`needle.compile` over the fast step; it
is skipped with a note while `needle.compile` does not exist). PyTorch: eager, and
`torch.compile(model)` with `--torch-compile`. The runs alternate (needle default, torch,
needle fast, torch, [needle compiled, torch], [torch compiled]), `--repeat` times; the table
shows medians and the ratios needle/torch for each mode and needle's default/fast time.

Before timing, each workload checks that the first step's loss agrees between the frameworks
(within 1e-4 relative; dropout is set to 0 for that check only, since the two frameworks draw
different masks). A mismatch is printed and makes the exit status 1.

Notes: SGD momentum follows each framework's own documented rule, with torch's `dampening`
set to the momentum so both compute u = m u + (1 - m) g (needle's course rule; torch starts
its buffer at g on the first step instead of (1 - m) g). Fashion-MNIST comes from --data-dir,
$NEEDLE_FASHION_MNIST or /usr/share/datasets/fashion-mnist; without it the MNIST test split
shipped with needle stands in (printed as a note; same shapes and cost).

Run: python benchmarks/bench_workloads.py [--workload all] [--steps N] [--repeat 3]
     [--threads 2] [--modes default,fast,compiled] [--torch-compile] [--json PATH]
--threads sets torch's threads and NumPy's BLAS threads (OPENBLAS/OMP/MKL_NUM_THREADS are set
before NumPy is imported).
"""
import os
import sys


def _threads_from_argv(argv) -> int:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 2


THREADS = _threads_from_argv(sys.argv[1:])
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)  # NumPy's BLAS reads these at import

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import machine, print_table  # noqa: E402

import needle as ndl  # noqa: E402
from needle import nn, ops  # noqa: E402
from needle.models import LanguageModel, MLPResNet  # noqa: E402

CHECK_RTOL = 1e-4
NEEDLE_MODES = ("default", "fast", "compiled")
# issue 12's targets: needle default backward() vs torch eager, and default / fast time
TARGETS = {"mlp": 0.9, "cnn": 0.8, "lstm": 0.8, "transformer": 0.9}
DEFAULT_OVER_FAST = 1.25


# ---- shared helpers ---------------------------------------------------------------------------
def _t(a) -> torch.Tensor:
    """A torch tensor holding a copy of a needle Tensor's (or NumPy array's) values."""
    a = a.numpy() if isinstance(a, ndl.Tensor) else a
    return torch.tensor(np.ascontiguousarray(a))


def _torch_linear(layer: nn.Linear) -> torch.nn.Linear:
    """torch.nn.Linear with the weights of a needle Linear (weight (in, out) -> (out, in))."""
    m = torch.nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        m.weight.copy_(_t(layer.weight.numpy().T))
        m.bias.copy_(_t(layer.bias.numpy().reshape(-1)))
    return m


def _torch_norm(norm, cls):
    """A torch BatchNorm1d/2d or LayerNorm with a needle norm's weight and bias."""
    m = cls(norm.dim, eps=norm.eps)
    with torch.no_grad():
        m.weight.copy_(_t(norm.weight))
        m.bias.copy_(_t(norm.bias))
    return m


def _torch_embedding(emb: nn.Embedding) -> torch.nn.Embedding:
    m = torch.nn.Embedding(emb.num_embeddings, emb.embedding_dim)
    with torch.no_grad():
        m.weight.copy_(_t(emb.weight))
    return m


class _BatchOrder:
    """Index batches of a data set in shuffled epochs (seed 0), cycling when one epoch is short."""

    def __init__(self, n: int, batch: int):
        self.n, self.batch = n, batch
        self.rng = np.random.RandomState(0)
        self.order = np.empty(0, dtype=np.int64)

    def __getitem__(self, k: int) -> np.ndarray:
        end = (k + 1) * self.batch
        while len(self.order) < end:
            self.order = np.concatenate([self.order, self.rng.permutation(self.n)])
        return self.order[k * self.batch:end]


_DATA = {}


def fashion_mnist(data_dir):
    """(X float32 (N, 784) in [0, 1], y uint8 (N,)): Fashion-MNIST's training split, or the MNIST
    test split shipped with needle when Fashion-MNIST is not installed."""
    if "mnist" not in _DATA:
        try:
            paths = ndl.data.find_fashion_mnist(data_dir)
            X, y = ndl.data.parse_mnist(paths["train_images"], paths["train_labels"])
            print(f"data: Fashion-MNIST training split, {len(X)} images")
        except FileNotFoundError as e:
            X, y = ndl.data.parse_mnist(*ndl.data.shipped_mnist_test())
            print(f"note: {e}\nnote: using the MNIST test split shipped with needle instead "
                  f"({len(X)} images, same shapes; batches cycle through reshuffled epochs)")
        _DATA["mnist"] = (X, y)
    return _DATA["mnist"]


# ---- the workloads ----------------------------------------------------------------------------
class Workload:
    """One training workload: models for both frameworks, their optimizers, batches, losses.

    Subclasses set name, unit, items (samples or tokens per step), steps (default timed steps)
    and warmup (untimed steps per run), and write the methods below.
    """

    name = unit = ""
    items = steps = warmup = 0

    def __init__(self, args):
        self.args = args

    def needle_model(self, check: bool = False):
        """A fresh needle model from seed 0 (`check`: dropout off, for the loss check)."""
        raise NotImplementedError

    def torch_model(self, model):
        """The PyTorch twin holding `model`'s current weights."""
        raise NotImplementedError

    def needle_optimizer(self, model):
        raise NotImplementedError

    def torch_optimizer(self, model):
        raise NotImplementedError

    def batch(self, k: int):
        """The k-th batch as NumPy arrays (inputs, targets), in the dtypes needle is fed."""
        raise NotImplementedError

    def needle_loss(self, model, x, y):
        return nn.SoftmaxLoss()(model(x), y)

    def torch_loss(self, model, x, y):
        return torch.nn.functional.cross_entropy(model(x), y)

    def torch_inputs(self, x, y):
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class MLPWorkload(Workload):
    name, unit, items, steps, warmup = "mlp", "samples/s", 128, 463, 5  # 468 steps = one epoch

    def __init__(self, args):
        super().__init__(args)
        self.X, self.y = fashion_mnist(args.data_dir)
        self.order = _BatchOrder(len(self.X), self.items)

    def needle_model(self, check=False):
        np.random.seed(0)
        return MLPResNet(784, 100, num_blocks=3, norm=nn.BatchNorm1d,
                         drop_prob=0.0 if check else 0.1)

    def torch_model(self, model):
        t = torch.nn

        class Block(t.Module):
            def __init__(self, block):
                super().__init__()
                lin1, bn1, _, drop, lin2, bn2 = block.modules[0].fn.modules
                self.f = t.Sequential(_torch_linear(lin1), _torch_norm(bn1, t.BatchNorm1d),
                                      t.ReLU(), t.Dropout(drop.p), _torch_linear(lin2),
                                      _torch_norm(bn2, t.BatchNorm1d))

            def forward(self, x):
                return torch.relu(self.f(x) + x)

        mods = model.modules
        return t.Sequential(_torch_linear(mods[0]), t.ReLU(), *[Block(b) for b in mods[2:-1]],
                            _torch_linear(mods[-1]))

    def needle_optimizer(self, model):
        return ndl.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)

    def torch_optimizer(self, model):
        return torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)

    def batch(self, k):
        idx = self.order[k]
        return self.X[idx], self.y[idx]


class _NeedleConvBN(nn.Module):
    """3x3 conv with bias and padding 1 (NCHW), BatchNorm2d, ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv(cin, cout, 3, stride=stride, bias=True, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class NeedleSmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = _NeedleConvBN(1, 16)
        self.c2 = _NeedleConvBN(16, 32, stride=2)
        self.r1 = _NeedleConvBN(32, 32)
        self.r2 = _NeedleConvBN(32, 32)
        self.c3 = _NeedleConvBN(32, 64, stride=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):  # (B, 1, 28, 28)
        x = self.c2(self.c1(x))  # (B, 32, 14, 14)
        x = x + self.r2(self.r1(x))
        x = self.c3(x)  # (B, 64, 7, 7)
        h, w = x.shape[2], x.shape[3]
        return self.fc(x.sum(axes=(2, 3)) / (h * w))  # (B, 10)


def _torch_conv_bn(block: _NeedleConvBN):
    conv = block.conv
    m = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                        conv.padding)
    with torch.no_grad():
        # needle weight (K, K, C_in, C_out) -> torch (C_out, C_in, K, K)
        m.weight.copy_(_t(conv.weight.numpy().transpose(3, 2, 0, 1)))
        m.bias.copy_(_t(conv.bias))
    return torch.nn.Sequential(m, _torch_norm(block.bn, torch.nn.BatchNorm2d), torch.nn.ReLU())


class TorchSmallCNN(torch.nn.Module):
    def __init__(self, model: NeedleSmallCNN):
        super().__init__()
        self.c1, self.c2 = _torch_conv_bn(model.c1), _torch_conv_bn(model.c2)
        self.r1, self.r2 = _torch_conv_bn(model.r1), _torch_conv_bn(model.r2)
        self.c3, self.fc = _torch_conv_bn(model.c3), _torch_linear(model.fc)

    def forward(self, x):
        x = self.c2(self.c1(x))
        x = x + self.r2(self.r1(x))
        return self.fc(self.c3(x).mean(dim=(2, 3)))


class CNNWorkload(Workload):
    name, unit, items, steps, warmup = "cnn", "samples/s", 64, 40, 3

    def __init__(self, args):
        super().__init__(args)
        self.X, self.y = fashion_mnist(args.data_dir)
        self.order = _BatchOrder(len(self.X), self.items)

    def needle_model(self, check=False):
        np.random.seed(0)
        return NeedleSmallCNN()

    def torch_model(self, model):
        return TorchSmallCNN(model)

    def needle_optimizer(self, model):
        return ndl.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def torch_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, dampening=0.9)

    def batch(self, k):
        idx = self.order[k]
        return self.X[idx].reshape(-1, 1, 28, 28), self.y[idx]


class _TokenWorkload(Workload):
    """Random token ids (seed 0): inputs float32 (as the course feeds ids), targets float32."""

    vocab = 10000
    batch_first = False
    T = B = 0

    def batch(self, k):
        rng = np.random.default_rng(k)
        shape = (self.B, self.T) if self.batch_first else (self.T, self.B)
        ids = rng.integers(0, self.vocab, shape).astype(np.float32)
        targets = rng.integers(0, self.vocab, self.T * self.B).astype(np.float32)
        return ids, targets

    def torch_inputs(self, x, y):
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))


class TorchLSTMLM(torch.nn.Module):
    def __init__(self, model: LanguageModel):
        super().__init__()
        lstm = model.seq_model
        self.emb = _torch_embedding(model.embedding)
        self.rnn = torch.nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers)
        with torch.no_grad():
            for k, cell in enumerate(lstm.lstm_cells):  # needle (in, 4H) -> torch (4H, in)
                getattr(self.rnn, f"weight_ih_l{k}").copy_(_t(cell.W_ih.numpy().T))
                getattr(self.rnn, f"weight_hh_l{k}").copy_(_t(cell.W_hh.numpy().T))
                getattr(self.rnn, f"bias_ih_l{k}").copy_(_t(cell.bias_ih))
                getattr(self.rnn, f"bias_hh_l{k}").copy_(_t(cell.bias_hh))
        self.lin = _torch_linear(model.linear)

    def forward(self, x):  # (T, B) ids -> (T*B, V)
        out, _ = self.rnn(self.emb(x))  # zero initial state
        return self.lin(out.reshape(-1, out.shape[-1]))


class LSTMWorkload(_TokenWorkload):
    name, unit, steps, warmup = "lstm", "tokens/s", 12, 2
    T, B = 35, 32
    items = T * B

    def needle_model(self, check=False):
        np.random.seed(0)
        return LanguageModel(256, self.vocab, 256, num_layers=2, seq_model="lstm",
                             seq_len=self.T)

    def torch_model(self, model):
        return TorchLSTMLM(model)

    def needle_loss(self, model, x, y):
        logits, _ = model(x)  # h=None: zero initial state every step
        return nn.SoftmaxLoss()(logits, y)

    def needle_optimizer(self, model):
        return ndl.optim.SGD(model.parameters(), lr=1.0)

    def torch_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=1.0)


def _causal_mask(T: int) -> np.ndarray:
    """(T, T) additive mask: 0 where key <= query, -1e9 above the diagonal."""
    return np.triu(np.full((T, T), -1e9, dtype=np.float32), k=1)


class NeedleBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + MLP(LN(x)); (B, T, d) -> (B, T, d)."""

    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm1d(d), nn.LayerNorm1d(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x, mask):
        B, T, d = x.shape
        H = self.heads
        h = self.ln1(x)

        def heads(t):  # (B, T, d) -> (B, H, T, d/H)
            return ops.permute(ops.reshape(t, (B, T, H, d // H)), (0, 2, 1, 3))

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        scores = ops.matmul(q, ops.permute(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(d // H))
        att = ops.matmul(ops.softmax(scores + mask, axes=-1), v)  # (B, H, T, d/H)
        att = ops.reshape(ops.permute(att, (0, 2, 1, 3)), (B, T, d))
        x = x + self.proj(att)
        return x + self.ff2(ops.relu(self.ff1(self.ln2(x))))


class NeedleTransformerLM(nn.Module):
    """ids (B, T) -> logits (B*T, V)."""

    def __init__(self, vocab, d, heads, ff, layers, T):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(T, d)
        self.blocks = [NeedleBlock(d, heads, ff) for _ in range(layers)]
        self.ln, self.head = nn.LayerNorm1d(d), nn.Linear(d, vocab)
        self.mask = ndl.Tensor(_causal_mask(T), requires_grad=False)
        self.positions = ndl.Tensor(np.arange(T, dtype=np.float32)[None, :],
                                    requires_grad=False)

    def forward(self, ids):
        B, T = ids.shape
        x = self.tok(ids) + self.pos(self.positions)  # (B, T, d) + (1, T, d)
        for block in self.blocks:
            x = block(x, self.mask)
        x = self.ln(x)
        return self.head(ops.reshape(x, (B * T, x.shape[2])))


class TorchBlock(torch.nn.Module):
    def __init__(self, block: NeedleBlock):
        super().__init__()
        self.heads = block.heads
        ln = torch.nn.LayerNorm
        self.ln1, self.ln2 = _torch_norm(block.ln1, ln), _torch_norm(block.ln2, ln)
        self.q, self.k, self.v = (_torch_linear(block.q), _torch_linear(block.k),
                                  _torch_linear(block.v))
        self.proj = _torch_linear(block.proj)
        self.ff1, self.ff2 = _torch_linear(block.ff1), _torch_linear(block.ff2)

    def forward(self, x, mask):
        B, T, d = x.shape
        H = self.heads
        h = self.ln1(x)

        def heads(t):
            return t.reshape(B, T, H, d // H).permute(0, 2, 1, 3)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        scores = (q @ k.permute(0, 1, 3, 2)) * (1.0 / math.sqrt(d // H))
        att = torch.softmax(scores + mask, dim=-1) @ v
        att = att.permute(0, 2, 1, 3).reshape(B, T, d)
        x = x + self.proj(att)
        return x + self.ff2(torch.relu(self.ff1(self.ln2(x))))


class TorchTransformerLM(torch.nn.Module):
    def __init__(self, model: NeedleTransformerLM):
        super().__init__()
        self.tok, self.pos = _torch_embedding(model.tok), _torch_embedding(model.pos)
        self.blocks = torch.nn.ModuleList(TorchBlock(b) for b in model.blocks)
        self.ln = _torch_norm(model.ln, torch.nn.LayerNorm)
        self.head = _torch_linear(model.head)
        self.register_buffer("mask", _t(model.mask))
        self.register_buffer("positions", torch.arange(model.mask.shape[0])[None, :])

    def forward(self, ids):
        B, T = ids.shape
        x = self.tok(ids) + self.pos(self.positions)
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.ln(x).reshape(B * T, -1))


class TransformerWorkload(_TokenWorkload):
    name, unit, steps, warmup = "transformer", "tokens/s", 10, 2
    T, B = 128, 16
    items = T * B
    batch_first = True

    def needle_model(self, check=False):
        np.random.seed(0)
        return NeedleTransformerLM(self.vocab, 256, 4, 1024, 2, self.T)

    def torch_model(self, model):
        return TorchTransformerLM(model)

    def needle_optimizer(self, model):
        return ndl.optim.Adam(model.parameters(), lr=1e-3)

    def torch_optimizer(self, model):
        return torch.optim.Adam(model.parameters(), lr=1e-3)


WORKLOADS = {w.name: w for w in (MLPWorkload, CNNWorkload, LSTMWorkload, TransformerWorkload)}


# ---- steps and runs ---------------------------------------------------------------------------
def needle_stepper(wl: Workload, model, opt, mode: str):
    """A function (x_np, y_np) -> loss float doing one whole needle training step."""
    def default(x_np, y_np):
        x = ndl.Tensor(x_np, requires_grad=False)
        y = ndl.Tensor(y_np, requires_grad=False)
        opt.reset_grad()
        loss = wl.needle_loss(model, x, y)
        loss.backward()  # what a course user writes: builds the gradient graph
        opt.step()
        return loss.item()

    def fast(x_np, y_np):
        x = ndl.Tensor(x_np, requires_grad=False)
        y = ndl.Tensor(y_np, requires_grad=False)
        opt.reset_grad()
        loss = wl.needle_loss(model, x, y)
        loss.backward(create_graph=False)
        opt.step()
        return loss.item()

    if mode == "default":
        return default
    if mode == "fast":
        return fast

    # mode "compiled": the hook for needle.compile (a later issue). Assumed interface: it wraps
    # a function of Tensors doing one step and returns a callable with the same signature.
    def train_step(x, y):
        opt.reset_grad()
        loss = wl.needle_loss(model, x, y)
        loss.backward(create_graph=False)
        opt.step()
        return loss

    compiled_step = ndl.compile(train_step)

    def compiled(x_np, y_np):
        x = ndl.Tensor(x_np, requires_grad=False)
        y = ndl.Tensor(y_np, requires_grad=False)
        return compiled_step(x, y).item()

    return compiled


def torch_stepper(wl: Workload, model, opt):
    def step(x_np, y_np):
        x, y = wl.torch_inputs(x_np, y_np)
        opt.zero_grad()
        loss = wl.torch_loss(model, x, y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def make_run(wl: Workload, framework: str, mode: str):
    """A fresh model pair from seed 0 and the step function of (framework, mode)."""
    model = wl.needle_model()
    model.train()
    if framework == "needle":
        return needle_stepper(wl, model, wl.needle_optimizer(model), mode)
    tmodel = wl.torch_model(model)
    tmodel.train()
    if mode == "compiled":
        tmodel = torch.compile(tmodel)
    return torch_stepper(wl, tmodel, wl.torch_optimizer(tmodel))


def timed_run(wl: Workload, framework: str, mode: str, steps: int, warmup: int) -> float:
    """Throughput (items/s) of `steps` timed steps after `warmup` untimed ones."""
    step = make_run(wl, framework, mode)
    for k in range(warmup):
        step(*wl.batch(k))
    t0 = time.perf_counter()
    for k in range(warmup, warmup + steps):
        step(*wl.batch(k))
    return steps * wl.items / (time.perf_counter() - t0)


def check_first_loss(wl: Workload) -> dict:
    """The first step's loss in both frameworks from the same weights and batch (no dropout)."""
    model = wl.needle_model(check=True)
    tmodel = wl.torch_model(model)
    model.train()
    tmodel.train()
    x_np, y_np = wl.batch(0)
    a = wl.needle_loss(model, ndl.Tensor(x_np, requires_grad=False),
                       ndl.Tensor(y_np, requires_grad=False)).item()
    with torch.no_grad():
        b = wl.torch_loss(tmodel, *wl.torch_inputs(x_np, y_np)).item()
    rel = abs(a - b) / max(abs(b), 1e-12)
    ok = rel <= CHECK_RTOL
    print(f"check {wl.name}: first-step loss needle {a:.7f} torch {b:.7f} "
          f"(relative difference {rel:.2e}) {'ok' if ok else 'MISMATCH'}")
    return {"needle": a, "torch": b, "relative_difference": rel, "ok": ok}


def schedule(needle_modes, torch_compile: bool):
    """One repeat's runs, alternating frameworks: needle m1, torch, needle m2, torch, ..."""
    runs = []
    for mode in needle_modes:
        runs += [("needle", mode), ("torch", "eager")]
    if torch_compile:
        runs.append(("torch", "compiled"))
    return runs


def bench_workload(wl: Workload, args) -> dict:
    steps = args.steps or wl.steps
    warmup = wl.warmup if args.warmup is None else args.warmup
    check = check_first_loss(wl)
    modes = [m for m in args.modes if m != "compiled" or hasattr(ndl, "compile")]
    if "compiled" in args.modes and "compiled" not in modes:
        print(f"{wl.name}: needle.compile does not exist yet; the compiled mode is skipped")
    runs = schedule(modes, args.torch_compile)
    rates = {f"{fw} {mode}": [] for fw, mode in runs}
    for r in range(args.repeat):
        for fw, mode in runs:
            key = f"{fw} {mode}"
            if key not in rates:
                continue  # dropped after an error in an earlier repeat
            try:
                rate = timed_run(wl, fw, mode, steps, warmup)
            except Exception as e:  # a compiler may be missing or fail: skip it, say why
                if mode != "compiled":
                    raise
                print(f"{wl.name}: {key} failed ({type(e).__name__}: {e}); skipped")
                del rates[key]
                continue
            rates[key].append(rate)
            print(f"{wl.name} repeat {r + 1}/{args.repeat}: {key:16s} {rate:10.1f} {wl.unit}",
                  flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items() if v}
    return {"unit": wl.unit, "items_per_step": wl.items, "steps": steps, "warmup": warmup,
            "check": check, "rates": rates, "median": medians}


def rows_for(name: str, res: dict):
    """Table rows: needle/torch for each needle mode against each torch mode measured."""
    med, unit, rows = res["median"], res["unit"], []
    for tmode, tlabel in (("eager", "torch eager"), ("compiled", "torch.compile")):
        if f"torch {tmode}" not in med:
            continue
        for nmode in NEEDLE_MODES:
            if f"needle {nmode}" not in med:
                continue
            a, b = med[f"needle {nmode}"], med[f"torch {tmode}"]
            target = f">= {TARGETS[name]}x" if (nmode, tmode) == ("default", "eager") else ""
            rows.append((f"{name}: needle {nmode} / {tlabel}", a, b, unit, f"{a / b:.2f}x",
                         target))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per run (default per workload: mlp 463, i.e. one epoch "
                         "of 468 with the 5 warm-up steps; cnn 40; lstm 12; transformer 10)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps per run (default: mlp 5, cnn 3, lstm 2, transformer 2)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="default,fast,compiled",
                    help="needle modes, comma-separated, from " + ",".join(NEEDLE_MODES))
    ap.add_argument("--torch-compile", action="store_true",
                    help="also time torch.compile(model)")
    ap.add_argument("--data-dir", default=os.environ.get("NEEDLE_FASHION_MNIST"))
    ap.add_argument("--json", metavar="PATH", help="write the numbers to PATH")
    args = ap.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in NEEDLE_MODES]
    if bad:
        ap.error(f"--modes: unknown mode(s) {bad}; choose from {list(NEEDLE_MODES)}")
    torch.set_num_threads(args.threads)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]

    results = {}
    for name in names:
        results[name] = bench_workload(WORKLOADS[name](args), args)

    title = (f"issue 12 workloads, medians of {args.repeat} alternating runs, "
             f"{args.threads} thread(s) (higher is better)")
    print_table(title, [row for name in names for row in rows_for(name, results[name])])
    speed_rows = []
    for name in names:
        med = results[name]["median"]
        if "needle default" in med and "needle fast" in med:
            d, f = med["needle default"], med["needle fast"]
            speed_rows.append((f"{name}: time default / fast", d, f, results[name]["unit"],
                               f"{f / d:.2f}x", f"<= {DEFAULT_OVER_FAST}x"))
    if speed_rows:
        print_table("needle: loss.backward() against backward(create_graph=False)", speed_rows,
                    columns=("default", "fast"))

    if args.json:
        out = {"machine": machine(), "threads": args.threads, "repeat": args.repeat,
               "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "torch": torch.__version__, "workloads": results}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    mismatched = [n for n in names if not results[n]["check"]["ok"]]
    if mismatched:
        print(f"first-step loss mismatch in: {', '.join(mismatched)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
