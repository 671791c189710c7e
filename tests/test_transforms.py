"""RandomRotation, PCA colour augmentation and test-time augmentation, against their
definitions (np.rot90, the colour covariance, a flip-invariant model)."""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle import data


def _img(h=7, w=7, c=3, seed=0):
    return np.random.RandomState(seed).rand(h, w, c).astype(np.float32)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_rotation_by_right_angles_is_rot90(interpolation):
    img = _img()
    rot = data.RandomRotation(90, interpolation=interpolation)
    for k, angle in ((1, 90), (2, 180), (3, 270), (0, 0)):
        np.testing.assert_allclose(rot.rotate(img, angle), np.rot90(img, k, axes=(0, 1)),
                                   atol=1e-5)
    chw = np.moveaxis(img, -1, 0)
    out = data.RandomRotation(90, interpolation=interpolation, layout="CHW").rotate(chw, 90)
    np.testing.assert_allclose(out, np.rot90(chw, 1, axes=(1, 2)), atol=1e-5)


def test_rotation_matches_definition_at_arbitrary_angles():
    img = _img(9, 8, 2, seed=1)
    angle = 23.0
    h, w = img.shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    t = np.deg2rad(angle)
    near = data.RandomRotation(30, fill=-1.0).rotate(img, angle)
    bil = data.RandomRotation(30, interpolation="bilinear").rotate(img, angle)
    for r in range(h):
        for c in range(w):
            x, y = c - cx, r - cy
            sc, sr = cx + np.cos(t) * x - np.sin(t) * y, cy + np.sin(t) * x + np.cos(t) * y
            ri, ci = int(np.rint(sr)), int(np.rint(sc))
            if 0 <= ri < h and 0 <= ci < w:
                np.testing.assert_array_equal(near[r, c], img[ri, ci])
            else:
                np.testing.assert_array_equal(near[r, c], -1.0)
            r0, c0 = int(np.floor(sr)), int(np.floor(sc))
            if 0 <= r0 and r0 + 1 < h and 0 <= c0 and c0 + 1 < w:
                fr, fc = sr - r0, sc - c0
                expected = ((1 - fr) * (1 - fc) * img[r0, c0] + (1 - fr) * fc * img[r0, c0 + 1]
                            + fr * (1 - fc) * img[r0 + 1, c0] + fr * fc * img[r0 + 1, c0 + 1])
                np.testing.assert_allclose(bil[r, c], expected, rtol=1e-5, atol=1e-6)


def test_rotation_draws_and_batches():
    batch = np.stack([_img(seed=s) for s in range(3)])
    np.random.seed(3)
    out = data.RandomRotation(40)(batch)
    np.random.seed(3)
    angles = [np.random.uniform(-40, 40) for _ in range(3)]
    rot = data.RandomRotation(40)
    for i in range(3):
        np.testing.assert_array_equal(out[i], rot.rotate(batch[i], angles[i]))
    with pytest.raises(ValueError, match="RandomRotation"):
        data.RandomRotation(-1)
    with pytest.raises(ValueError, match="RandomRotation"):
        data.RandomRotation(10, interpolation="cubic")


def test_pca_colour_augmentation_definition():
    rng = np.random.RandomState(4)
    mix = rng.randn(3, 3)
    images = (rng.randn(6, 5, 5, 3) @ mix).astype(np.float32)
    aug = data.PCAColorAugmentation.fit(images, std=0.1)
    pixels = images.reshape(-1, 3).astype(np.float64)
    cov = np.cov(pixels, rowvar=False)
    np.testing.assert_allclose(aug.eigvecs @ np.diag(aug.eigvals) @ aug.eigvecs.T, cov,
                               rtol=1e-10, atol=1e-12)
    np.random.seed(5)
    out = aug(images[0])
    np.random.seed(5)
    alpha = np.random.normal(0.0, 0.1, size=3)
    expected = images[0] + (mix_shift := aug.shift(alpha)).astype(np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # the offset is the same for every pixel and lies along the principal components
    diff = (out - images[0]).reshape(-1, 3)
    np.testing.assert_allclose(diff, np.broadcast_to(mix_shift, diff.shape), rtol=1e-4,
                               atol=1e-6)
    chw = np.moveaxis(images, -1, 1)
    aug_chw = data.PCAColorAugmentation.fit(chw, layout="CHW")
    np.testing.assert_allclose(aug_chw.eigvals, aug.eigvals, rtol=1e-10)
    np.random.seed(6)
    batch_out = aug_chw(chw)
    np.random.seed(6)
    alphas = np.random.normal(0.0, 0.1, size=(6, 3))
    for i in range(6):
        np.testing.assert_allclose(batch_out[i] - chw[i],
                                   np.broadcast_to(aug_chw.shift(alphas[i])[:, None, None],
                                                   (3, 5, 5)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        aug(np.zeros((4, 4, 2), dtype=np.float32))


class _FlipInvariant(nn.Module):
    """Logits from the sum over the width of a linear map: a mirror changes nothing."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2 * 6, 4)

    def forward(self, x):  # (N, 2, 6, 6)
        pooled = x.sum((3,))  # (N, 2, 6): sum over the width axis
        return self.fc(pooled.reshape((x.shape[0], 12)))


def test_tta_of_a_flip_invariant_model_changes_nothing():
    np.random.seed(7)
    model = _FlipInvariant()
    batch = np.random.RandomState(8).rand(5, 2, 6, 6).astype(np.float32)
    plain = ndl.ops.softmax(model(ndl.Tensor(batch, requires_grad=False))).numpy()
    flipped = data.tta_predict(model, batch, "flip").numpy()
    np.testing.assert_allclose(flipped, plain, rtol=1e-5, atol=1e-7)


def test_tta_views_and_average():
    batch = np.random.RandomState(9).rand(2, 1, 5, 5).astype(np.float32)
    views = data.tta_views(batch, "crop", padding=1)
    assert len(views) == 10
    np.testing.assert_array_equal(views[0], batch)
    np.testing.assert_array_equal(views[1], batch[..., ::-1])
    np.testing.assert_array_equal(views[2][:, :, 1:, 1:], batch[:, :, :-1, :-1])  # shift -1
    np.random.seed(10)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 3))
    avg = data.tta_predict(model, batch, "crop", padding=1).numpy()
    expected = np.mean([ndl.ops.softmax(model(ndl.Tensor(v.astype(np.float32)))).numpy()
                        for v in views], axis=0)
    np.testing.assert_allclose(avg, expected, rtol=1e-6)
    np.testing.assert_allclose(avg.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="tta_views"):
        data.tta_views(batch, "rotate")
