"""The lectures' models and evaluation tricks through `needle train` / `needle eval`: DenseNet
classification, FCN segmentation of the digit masks (pixel accuracy and mean IoU checked
against `data.segmentation`'s NumPy definitions, masks.png), test-time augmentation (a model
that averages over a flip is unchanged by flip TTA; crop TTA against views built here with
NumPy), --augment rotate, and the one-line errors of combinations that do not fit."""
import json
import os

import numpy as np
import pytest

import needle as ndl
from needle import nn, ops, train
from needle.data import MNISTDataset, NDArrayDataset, shipped_mnist_test
from needle.data.data_transforms import RandomRotation
from needle.data.segmentation import MNISTSegmentation, mean_iou, pixel_accuracy
from needle.models import DenseNet
from needle.models.densenet import DenseBlock
from needle.serialization import load_checkpoint
from needle.train import cli, run_files
from needle.train.segmentation import segmentation_scores

QUIET = ["--no-progress", "--no-summary"]


def _tiny_mnist():
    ds = MNISTDataset(*shipped_mnist_test())
    X, y = ds.images.reshape(len(ds), -1), ds.labels
    return NDArrayDataset(X[:128], y[:128]), NDArrayDataset(X[9800:], y[9800:])


@train.register_dataset("tiny-mnist-lectures")
def _tiny(args):
    tr, ev = _tiny_mnist()
    return train.DatasetInfo("tiny-mnist-lectures", tr, ev, input_shape=(784,), num_classes=10)


class FlipAveraged(nn.Module):
    """logits(x) = g(x) + g(mirror of x): exactly invariant to a left-right flip of x."""

    def __init__(self, num_classes):
        super().__init__()
        self.g = nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        n = x.shape[0]
        mirror = ops.flip(x.reshape((n, 1, 28, 28)), (3,)).reshape((n, 784))
        return self.g(x) + self.g(mirror)


@train.register_model("flip-averaged-mlp")
def _flip_averaged(info, args):
    return FlipAveraged(info.num_classes)


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _eval(capsys, *argv):
    capsys.readouterr()
    assert cli.main(["eval", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _one_line_error(capsys, argv, *needles):
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    for n in needles:
        assert n in err[0], err[0]


def _load_model(path):
    """The checkpoint's model rebuilt through the registry, its eval data and its weights."""
    ckpt = load_checkpoint(path)
    cfg = train.engine._Namespace(**ckpt.meta["config"])
    info = train.DATASETS[cfg.dataset](cfg)
    model = train.MODELS[cfg.model](info, cfg)
    model.load_state_dict(ckpt.model_state)
    model.eval()
    return model, info


def _logits(model, X):
    with ndl.no_grad():
        return model(ndl.Tensor(np.ascontiguousarray(X, dtype=np.float32),
                                requires_grad=False)).numpy()


# ---- DenseNet ---------------------------------------------------------------------------------

def test_densenet_trains_and_eval_rebuilds_its_size(tmp_path, capsys):
    out = tmp_path / "dn"
    argv = ["train", "--model", "densenet", "--dataset", "tiny-mnist-lectures",
            "--growth-rate", "4", "--dense-blocks", "1,1", "--batch-size", "32",
            "--epochs", "2", "--max-steps", "6", "--out", str(out), *QUIET]
    assert cli.main(argv) == 0
    rec = _records(out)[-1]
    assert rec["step"] == 6 and 0.0 <= rec["eval_accuracy"] <= 1.0
    # the stored --growth-rate/--dense-blocks rebuild the same network: eval loads it
    got = _eval(capsys, str(out / "last.safetensors"))
    assert got["eval_accuracy"] == pytest.approx(rec["eval_accuracy"])
    model, info = _load_model(str(out / "last.safetensors"))
    assert isinstance(model, DenseNet) and model.stem.weight.shape[-1] == 8  # 2k
    blocks = [m for m in model.modules_list() if isinstance(m, DenseBlock)]
    assert [len(b.layers) for b in blocks] == [1, 1]
    X, y = info.eval[:]
    logits = _logits(model, X)
    assert float((logits.argmax(1) == y).mean()) == pytest.approx(rec["eval_accuracy"])
    # flattened rows are read as the (1, 28, 28) images the plain DenseNet takes
    plain = DenseNet.forward(model, ndl.Tensor(X[:4].reshape(4, 1, 28, 28),
                                               requires_grad=False))
    np.testing.assert_allclose(logits[:4], plain.numpy(), rtol=1e-5, atol=1e-6)


# ---- segmentation -------------------------------------------------------------------------------

def test_segmentation_scores_match_the_numpy_definitions():
    rng = np.random.default_rng(0)
    for k, absent in ((11, (3, 7)), (4, ())):
        target = rng.integers(0, k, size=(5, 9, 9))
        pred = rng.integers(0, k, size=(5, 9, 9))
        for c in absent:  # classes in neither: left out of the mean
            target[target == c] = 0
            pred[pred == c] = 1
        cm = np.zeros((k, k))
        np.add.at(cm, (target.ravel(), pred.ravel()), 1)
        got = segmentation_scores(cm.tolist())
        assert got["pixel_accuracy"] == pytest.approx(pixel_accuracy(pred, target))
        assert got["mean_iou"] == pytest.approx(mean_iou(pred, target, k))


@pytest.fixture(scope="module")
def fcn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "fcn"
    argv = ["train", "--model", "fcn", "--dataset", "mnist-seg", "--width", "4",
            "--batch-size", "16", "--epochs", "1", "--max-steps", "3", "--out", str(out),
            *QUIET]
    assert cli.main(argv) == 0
    return out


def test_fcn_segmentation_metrics_masks_and_eval(fcn_run, capsys):
    rec = _records(fcn_run)[-1]
    for split in ("train", "eval"):
        for key in ("loss", "pixel_accuracy", "mean_iou"):
            assert f"{split}_{key}" in rec
    assert sorted(os.listdir(fcn_run)) == ["best.safetensors", "curves.png", "last.safetensors",
                                           "masks.png", "metrics.csv", "metrics.jsonl"]
    assert (fcn_run / "masks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (fcn_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "eval_mean_iou" in header and "train_pixel_accuracy" in header
    # the reference: the checkpoint's predictions scored by data.segmentation's definitions
    model, info = _load_model(str(fcn_run / "last.safetensors"))
    assert isinstance(info.eval, MNISTSegmentation) and len(info.eval) == 2000
    preds = np.concatenate([_logits(model, info.eval.images[i:i + 500]).argmax(1)
                            for i in range(0, 2000, 500)])
    masks = info.eval.masks
    assert rec["eval_pixel_accuracy"] == pytest.approx(pixel_accuracy(preds, masks))
    assert rec["eval_mean_iou"] == pytest.approx(mean_iou(preds, masks, 11))
    got = _eval(capsys, str(fcn_run / "last.safetensors"))
    assert got["eval_pixel_accuracy"] == pytest.approx(rec["eval_pixel_accuracy"])
    assert got["eval_mean_iou"] == pytest.approx(rec["eval_mean_iou"])
    assert "eval_accuracy" not in got


def test_segmentation_epoch_and_done_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_files, "_pyplot", lambda: None)  # as without matplotlib
    out = tmp_path / "seg"
    assert cli.main(["train", "--model", "fcn", "--dataset", "mnist-seg", "--width", "2",
                     "--batch-size", "8", "--epochs", "1", "--max-steps", "1", "--out",
                     str(out), *QUIET]) == 0
    text = capsys.readouterr().out
    rec = _records(out)[-1]
    assert f"mIoU {rec['eval_mean_iou']:.4f}" in text
    assert f"pixel acc {rec['eval_pixel_accuracy']:.4f}" in text
    assert "note: masks.png not written: matplotlib is not installed" in text
    assert f"validation mean IoU {rec['eval_mean_iou']:.4f}" in text
    assert "masks.png" not in os.listdir(out) and "curves.png" not in os.listdir(out)


# ---- test-time augmentation ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def flip_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tta") / "flip"
    assert cli.main(["train", "--model", "flip-averaged-mlp", "--dataset", "tiny-mnist-lectures",
                     "--batch-size", "32", "--epochs", "1", "--max-steps", "4", "--out",
                     str(out), *QUIET]) == 0
    return out


def test_flip_tta_of_a_flip_invariant_model_changes_nothing(flip_run, capsys):
    got = _eval(capsys, str(flip_run / "last.safetensors"), "--tta", "flip")
    assert got["tta"] == "flip" and got["tta_views"] == 2
    assert got["eval_accuracy_tta"] == got["eval_accuracy"]
    # and the model really is flip-invariant, while its g alone is not
    model, info = _load_model(str(flip_run / "last.safetensors"))
    X = info.eval[:][0][:16]
    mirror = X.reshape(16, 1, 28, 28)[..., ::-1].reshape(16, 784)
    np.testing.assert_array_equal(_logits(model, X), _logits(model, mirror))
    assert not np.allclose(_logits(model.g, X), _logits(model.g, mirror))


def _crop_views_reference(images, p):
    """The ten views written out with NumPy: the centre and the four corner crops of the image
    zero-padded by p (shifts (0,0), (-p,-p), (-p,p), (p,-p), (p,p)), and their mirrors."""
    n, c, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
    views = []
    for dr, dc in ((0, 0), (-p, -p), (-p, p), (p, -p), (p, p)):
        crop = padded[:, :, p + dr:p + dr + h, p + dc:p + dc + w]
        views += [crop, crop[..., ::-1]]
    return views


def test_crop_tta_matches_views_built_with_numpy(tmp_path, capsys):
    # a model that is not flip-invariant, so that the views matter
    out = tmp_path / "mlp"
    assert cli.main(["train", "--dataset", "tiny-mnist-lectures", "--hidden-dim", "16",
                     "--batch-size", "32", "--epochs", "1", "--max-steps", "4", "--out",
                     str(out), *QUIET]) == 0
    for mode in ("crop", "flip"):
        got = _eval(capsys, str(out / "last.safetensors"), "--tta", mode)
        model, info = _load_model(str(out / "last.safetensors"))
        X, y = info.eval[:]
        images = X.reshape(-1, 1, 28, 28)
        views = (_crop_views_reference(images, 2) if mode == "crop"
                 else [images, images[..., ::-1]])
        assert got["tta_views"] == len(views)
        probs = 0.0
        for v in views:
            z = _logits(model, v.reshape(len(v), 784)).astype(np.float64)
            e = np.exp(z - z.max(1, keepdims=True))
            probs = probs + e / e.sum(1, keepdims=True)
        expected = float((probs.argmax(1) == y).mean())
        assert got["eval_accuracy_tta"] == pytest.approx(expected, abs=1.5 / len(y))
        assert got["eval_accuracy"] == pytest.approx(float((_logits(model, X).argmax(1) == y)
                                                           .mean()))


# ---- augmentation ------------------------------------------------------------------------------

def test_augment_rotate_is_random_rotation():
    kinds = train.mnist.augmentation("rotate")
    assert [type(t) for t in kinds] == [RandomRotation] and kinds[0].degrees == 15.0
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--augment", "rotate"])
    assert args.augment == "rotate"
    folder = "/work/shared/data/fashion-mnist"
    if not os.path.isdir(folder):
        pytest.skip("Fashion-MNIST not found")
    args.data_dir = folder
    info = train.DATASETS["fashion-mnist"](args)
    assert [type(t) for t in info.train.transforms] == [RandomRotation]
    assert info.eval.transforms is None


# ---- combinations that do not fit -------------------------------------------------------------

@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(12)]
    for name, n in (("train.txt", 40), ("valid.txt", 10)):
        (d / name).write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(n)))
    out = d / "lm"
    assert cli.main(["train", "--model", "rnn-lm", "--dataset", str(d), "--hidden-dim", "8",
                     "--embedding-dim", "8", "--num-layers", "1", "--bptt", "8",
                     "--batch-size", "4", "--epochs", "1", "--max-steps", "2", "--out",
                     str(out), *QUIET]) == 0
    return out


def test_tta_needs_an_image_classifier(lm_run, fcn_run, capsys):
    _one_line_error(capsys, ["eval", str(lm_run / "last.safetensors"), "--tta", "flip"],
                    "--tta flip", "language-model", "last.safetensors")
    _one_line_error(capsys, ["eval", str(fcn_run / "last.safetensors"), "--tta", "crop"],
                    "--tta crop", "segmentation")
    _one_line_error(capsys, ["eval", str(fcn_run / "last.safetensors"), "--tta", "spin"],
                    "--tta", "invalid choice")


@pytest.mark.parametrize("argv,needles", [
    (["--model", "fcn"], ["--model fcn", "segmentation dataset", "mnist-small"]),
    (["--model", "cnn", "--dataset", "mnist-seg"], ["--model cnn", "per-pixel", "fcn"]),
    (["--model", "densenet", "--dataset", "mnist-seg"], ["--model densenet", "segmentation"]),
    (["--model", "fcn", "--dataset", "mnist-seg", "--augment", "rotate"],
     ["--augment rotate", "mnist-seg"]),
    (["--model", "densenet", "--dense-blocks", "2,0"], ["--dense-blocks", "2,0"]),
    (["--model", "densenet", "--dense-blocks", "a"], ["--dense-blocks", "'a'"]),
    (["--model", "densenet", "--growth-rate", "0"], ["--growth-rate", ">= 1"]),
])
def test_combinations_that_do_not_fit_write_nothing(tmp_path, capsys, argv, needles):
    out = tmp_path / "never"
    _one_line_error(capsys, ["train", *argv, "--max-steps", "1", "--out", str(out), *QUIET],
                    *needles)
    assert not out.exists()


def test_summary_of_the_new_models(capsys):
    assert cli.main(["summary", "--model", "fcn", "--width", "2"]) == 0
    text = capsys.readouterr().out
    assert "model fcn on mnist-seg" in text and "ConvTranspose" in text
    assert cli.main(["summary", "--model", "densenet", "--growth-rate", "4", "--dense-blocks",
                     "1"]) == 0
    text = capsys.readouterr().out
    size = sum(int(np.prod(p.shape)) for p in DenseNet(growth_rate=4, block_config=(1,),
                                                      num_init_features=8).parameters())
    assert "model densenet on mnist-small" in text and f"total parameters {size:,}" in text
