"""Quality check of a finished `needle train` language-model run against PyTorch.

    needle train --model lstm-lm --dataset shakespeare --out RUN ...   # the needle run
    python benchmarks/quality_lm.py RUN [threads]                      # its PyTorch twin

Rebuilds the run's initial model exactly as `needle train` did (same seed, same config from
RUN/last.safetensors), copies those initial weights into an equivalent PyTorch model
(nn.Embedding, nn.LSTM/nn.GRU/nn.RNN, nn.Linear) and trains it with the same data order and
hyperparameters: the same bptt windows in the same order, the hidden state carried and detached
between windows and reset each epoch, Adam/SGD with the same lr and weight decay, the same
gradient clipping, the same per-epoch validation pass. Prints both per-epoch curves (needle's
from RUN/metrics.jsonl), the gap and the wall times, and writes RUN/quality_vs_torch.json and
RUN/quality_vs_torch.png.

Every run (the Transformer LM too, which has no twin here) is also compared with the unigram
baseline: the cross-entropy of the validation text under the training text's character (or
word) frequencies, the loss of a model that ignores context.
"""
import json
import os
import sys

RUN = sys.argv[1] if len(sys.argv) > 1 else "runs/latest"
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402,F401  (puts ./python on sys.path)
import needle.train.cli  # noqa: E402,F401  (registers the language-model datasets and models)
from needle import init, train  # noqa: E402
from needle.serialization import load_checkpoint  # noqa: E402
from needle.train.lm import LM_DEFAULTS  # noqa: E402

torch.set_num_threads(THREADS)
RNN_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


class TorchLM(torch.nn.Module):
    def __init__(self, kind, V, E, H, L):
        super().__init__()
        self.emb = torch.nn.Embedding(V, E)
        self.rnn = RNN_CLASSES[kind](E, H, L)
        self.lin = torch.nn.Linear(H, V)
        self.H = H

    def forward(self, x, h=None):
        out, h = self.rnn(self.emb(x), h)
        return self.lin(out.reshape(-1, self.H)), h


def _t(a):
    return torch.tensor(np.ascontiguousarray(a))


def copy_weights(ours, theirs, kind):
    """needle keeps (in, out) weights and one (in, G*H) matrix per layer; PyTorch (G*H, in)."""
    theirs.emb.weight.data = _t(ours.embedding.weight.numpy())
    cells = {"lstm": "lstm_cells", "gru": "gru_cells", "rnn": "rnn_cells"}[kind]
    for k, cell in enumerate(getattr(ours.seq_model, cells)):
        getattr(theirs.rnn, f"weight_ih_l{k}").data = _t(cell.W_ih.numpy().T)
        getattr(theirs.rnn, f"weight_hh_l{k}").data = _t(cell.W_hh.numpy().T)
        getattr(theirs.rnn, f"bias_ih_l{k}").data = _t(cell.bias_ih.numpy().reshape(-1))
        getattr(theirs.rnn, f"bias_hh_l{k}").data = _t(cell.bias_hh.numpy().reshape(-1))
    theirs.lin.weight.data = _t(ours.linear.weight.numpy().T)
    theirs.lin.bias.data = _t(ours.linear.bias.numpy().reshape(-1))


def detach(h):
    return tuple(s.detach() for s in h) if isinstance(h, tuple) else h.detach()


def run_epoch(model, windows, opt=None, clip=None):
    """Mean loss per token over `windows` (same loop as needle's LanguageModelTask)."""
    model.train(opt is not None)
    h, loss_sum, n_sum = None, 0.0, 0
    for X, y in windows:
        x = torch.tensor(X.numpy().astype(np.int64))
        t = torch.tensor(y.numpy().astype(np.int64))
        with torch.set_grad_enabled(opt is not None):
            logits, h = model(x, h)
            loss = torch.nn.functional.cross_entropy(logits, t)
        h = detach(h)
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        loss_sum += loss.item() * t.shape[0]
        n_sum += t.shape[0]
    return loss_sum / n_sum


def unigram_baseline(train_ids, valid_ids, vocab_size):
    """Cross-entropy (nats/token) of valid under the add-one-smoothed training frequencies."""
    counts = np.bincount(np.asarray(train_ids, np.int64), minlength=vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(valid_ids, np.int64)].mean())


def main():
    ckpt = load_checkpoint(os.path.join(RUN, "last.safetensors"))
    config = ckpt.meta["config"]
    args = train.engine._Namespace(**config)
    init.manual_seed(args.seed)  # exactly as train.run_training builds its model
    info, model, _, task, train_data, eval_data = train.engine._build(args)
    ours = [json.loads(x) for x in open(os.path.join(RUN, "metrics.jsonl"))]
    base = unigram_baseline(info.train, info.eval, info.num_classes)
    print(f"unigram baseline (validation cross-entropy under training frequencies): "
          f"{base:.4f} nats/token; needle's validation loss by epoch: "
          + ", ".join(f"{r['eval_loss']:.4f}" for r in ours))
    kind = {"lstm-lm": "lstm", "gru-lm": "gru", "rnn-lm": "rnn"}.get(args.model)
    if kind is None:
        sys.exit(f"quality_lm: {RUN} trained {args.model!r}; only recurrent LMs have a twin here")
    E = model.embedding.weight.shape[1]
    H = model.linear.weight.shape[0]
    L = getattr(args, "num_layers", None) or LM_DEFAULTS["num_layers"]
    clip = args.clip if args.clip is not None else LM_DEFAULTS["clip"]
    theirs = TorchLM(kind, info.num_classes, E, H, L)
    copy_weights(model, theirs, kind)
    if args.optimizer == "adam":
        opt = torch.optim.Adam(theirs.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    elif args.optimizer == "sgd":
        opt = torch.optim.SGD(theirs.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        sys.exit(f"quality_lm: optimizer {args.optimizer!r} has no twin here (adam, sgd)")
    rows, torch_seconds = [], 0.0
    print(f"{args.model} on {args.dataset}: E={E} H={H} L={L} B={args.batch_size} "
          f"bptt={args.bptt or LM_DEFAULTS['bptt']} {args.optimizer} lr={args.lr} clip={clip}, "
          f"{len(train_data)} steps per epoch, torch {THREADS} thread(s)")
    print("epoch  train needle  torch   valid needle  torch   gap (nats/token)")
    for epoch in range(1, len(ours) + 1):
        t0 = time.perf_counter()
        tr = run_epoch(theirs, train_data, opt, clip)
        torch_seconds += time.perf_counter() - t0
        va = run_epoch(theirs, eval_data)
        r = ours[epoch - 1]
        row = {"epoch": epoch, "steps": epoch * len(train_data),
               "needle_train": r["train_loss"], "torch_train": tr,
               "needle_valid": r["eval_loss"], "torch_valid": va,
               "needle_seconds": r["seconds"]}
        rows.append(row)
        print(f"{epoch:5d}  {row['needle_train']:12.4f}  {tr:.4f}  {row['needle_valid']:12.4f}  "
              f"{va:.4f}  {row['needle_valid'] - va:+.4f}", flush=True)
    print(f"wall (train+valid per epoch as logged by needle train): needle "
          f"{sum(r['needle_seconds'] for r in rows):.0f} s; torch training {torch_seconds:.0f} s")
    with open(os.path.join(RUN, "quality_vs_torch.json"), "w") as f:
        json.dump({"config": config, "rows": rows, "torch_train_seconds": torch_seconds,
                   "unigram_baseline": base}, f,
                  indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["steps"] for r in rows]
    for key, style in (("needle_train", "o-"), ("torch_train", "o--"),
                       ("needle_valid", "s-"), ("torch_valid", "s--")):
        ax.plot(steps, [r[key] for r in rows], style, label=key.replace("_", " "))
    ax.set_xlabel("training steps")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RUN, "quality_vs_torch.png"), dpi=100)


if __name__ == "__main__":
    main()
