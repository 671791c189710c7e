"""Image transforms on NumPy arrays, drawn from numpy's global RNG (course convention).

Images are H×W×C by default (`layout="HWC"`); pass `layout="CHW"` for C×H×W images such as
CIFAR-10 items. A 4-D input is a batch (N×H×W×C or N×C×H×W) and gets one independent draw per
image, from the same RNG stream that calling the transform on each image in turn would use.
"""
import numpy as np

_LAYOUTS = ("HWC", "CHW")


def _check_layout(name: str, layout: str) -> str:
    if layout not in _LAYOUTS:
        raise ValueError(f"{name}: layout must be one of {_LAYOUTS}, got {layout!r}")
    return layout


def _check_image(name: str, img) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim not in (3, 4):
        raise ValueError(f"{name}: expected an image (3-D) or a batch of images (4-D), "
                         f"got shape {img.shape}")
    return img


class Transform:
    """Base class: a callable mapping one NumPy image (or batch) to another."""

    def __call__(self, x):
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Compose(Transform):
    """Apply `transforms` in order: `Compose([RandomCrop(4), RandomFlipHorizontal()])`."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class RandomFlipHorizontal(Transform):
    """Flip the width axis with probability `p`.

    Draws exactly one `np.random.rand()` per image and flips when the draw is < p.
    img: (H, W, C) for layout "HWC", (C, H, W) for "CHW", or a batch of either.
    """

    def __init__(self, p: float = 0.5, layout: str = "HWC"):
        self.p = p
        self.layout = _check_layout("RandomFlipHorizontal", layout)

    def __call__(self, img):
        img = _check_image("RandomFlipHorizontal", img)
        width_axis = -2 if self.layout == "HWC" else -1
        if img.ndim == 3:
            return np.flip(img, axis=width_axis) if np.random.rand() < self.p else img
        flip = np.random.rand(img.shape[0]) < self.p  # same stream as one draw per image
        out = img.copy()
        out[flip] = np.flip(img[flip], axis=width_axis)
        return out


class RandomCrop(Transform):
    """Zero-pad height and width by `padding`, then crop back to the original size at a random
    shift.

    Draws exactly one `np.random.randint(low=-padding, high=padding + 1, size=2)` per image,
    giving (shift_rows, shift_cols); the result is rows padding+shift_rows ... +H and columns
    padding+shift_cols ... +W of the padded image.
    """

    def __init__(self, padding: int = 3, layout: str = "HWC"):
        if padding < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.layout = _check_layout("RandomCrop", layout)

    def __call__(self, img):
        img = _check_image("RandomCrop", img)
        p = self.padding
        if img.ndim == 3:
            shift_rows, shift_cols = np.random.randint(low=-p, high=p + 1, size=2)
            return self._shift(img, shift_rows, shift_cols)
        shifts = np.random.randint(low=-p, high=p + 1, size=(img.shape[0], 2))
        return np.stack([self._shift(x, r, c) for x, (r, c) in zip(img, shifts)])

    def _shift(self, img, shift_rows, shift_cols):
        # Same values as cropping the zero-padded image, without building it: output row i
        # is input row i + shift_rows (zero outside the image), likewise for columns.
        row_axis = 0 if self.layout == "HWC" else 1
        out = np.zeros_like(img)
        dst = [slice(None)] * 3
        src = [slice(None)] * 3
        for axis, shift in ((row_axis, int(shift_rows)), (row_axis + 1, int(shift_cols))):
            size = img.shape[axis]
            lo, hi = max(0, -shift), min(size, size - shift)
            if lo >= hi:
                return out
            dst[axis] = slice(lo, hi)
            src[axis] = slice(lo + shift, hi + shift)
        out[tuple(dst)] = img[tuple(src)]
        return out


class Normalize(Transform):
    """Per-channel `(x - mean) / std`, computed in float32.

    mean, std: sequences of length C (or scalars). No random draws.
    """

    def __init__(self, mean, std, layout: str = "HWC"):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if np.any(self.std == 0):
            raise ValueError(f"Normalize: std must be nonzero, got {self.std.tolist()}")
        self.layout = _check_layout("Normalize", layout)

    def __call__(self, img):
        img = _check_image("Normalize", img)
        shape = (-1,) if self.layout == "HWC" else (-1, 1, 1)
        mean = self.mean.reshape(shape) if self.mean.ndim else self.mean
        std = self.std.reshape(shape) if self.std.ndim else self.std
        return ((img.astype(np.float32, copy=False) - mean) / std).astype(np.float32, copy=False)


def _spatial_axes(layout: str, ndim: int):
    """(row axis, column axis, channel axis) of an image or batch in `layout`."""
    lead = ndim - 3
    if layout == "HWC":
        return lead, lead + 1, lead + 2
    return lead + 1, lead + 2, lead


class RandomRotation(Transform):
    """Rotate by an angle drawn uniformly from [-degrees, degrees], counter-clockwise for a
    positive angle (torchvision's convention), about the image centre ((H-1)/2, (W-1)/2).

    Output pixel (r, c) takes the input at the inversely rotated point, x = c - cx,
    y = r - cy: source column cx + cos(t) x - sin(t) y, source row cy + sin(t) x + cos(t) y,
    read by `interpolation` "nearest" (torchvision's default) or "bilinear"; points outside
    the image get `fill`. Draws one `np.random.uniform(-degrees, degrees)` per image.
    """

    def __init__(self, degrees: float, interpolation: str = "nearest", fill: float = 0.0,
                 layout: str = "HWC"):
        if degrees < 0:
            raise ValueError(f"RandomRotation: degrees must be >= 0, got {degrees}")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"RandomRotation: interpolation must be 'nearest' or 'bilinear', "
                             f"got {interpolation!r}")
        self.degrees = float(degrees)
        self.interpolation = interpolation
        self.fill = fill
        self.layout = _check_layout("RandomRotation", layout)

    def __call__(self, img):
        img = _check_image("RandomRotation", img)
        if img.ndim == 3:
            return self.rotate(img, np.random.uniform(-self.degrees, self.degrees))
        angles = [np.random.uniform(-self.degrees, self.degrees) for _ in range(img.shape[0])]
        return np.stack([self.rotate(x, a) for x, a in zip(img, angles)])

    def rotate(self, img: np.ndarray, angle: float) -> np.ndarray:
        """`img` (one image) rotated by `angle` degrees."""
        hwc = img if self.layout == "HWC" else np.moveaxis(img, 0, -1)
        h, w = hwc.shape[:2]
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        t = np.deg2rad(angle)
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        x, y = cols - cx, rows - cy
        src_c = cx + np.cos(t) * x - np.sin(t) * y
        src_r = cy + np.sin(t) * x + np.cos(t) * y
        if self.interpolation == "nearest":
            ri, ci = np.rint(src_r).astype(np.int64), np.rint(src_c).astype(np.int64)
            inside = (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
            out = np.full_like(hwc, self.fill)
            out[inside] = hwc[ri[inside], ci[inside]]
        else:
            r0, c0 = np.floor(src_r).astype(np.int64), np.floor(src_c).astype(np.int64)
            fr, fc = (src_r - r0)[..., None], (src_c - c0)[..., None]
            acc = np.zeros(hwc.shape, dtype=np.float64)
            for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                                (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
                rr, cc = r0 + dr, c0 + dc
                inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                vals = np.full(hwc.shape, float(self.fill))
                vals[inside] = hwc[rr[inside], cc[inside]]
                acc += wgt * vals
            out = acc.astype(hwc.dtype) if hwc.dtype.kind == "f" else np.rint(acc).astype(
                hwc.dtype)
        return out if self.layout == "HWC" else np.moveaxis(out, -1, 0)


class PCAColorAugmentation(Transform):
    """AlexNet's colour augmentation: add `eigvecs @ (alpha * eigvals)` to every pixel, with
    alpha ~ N(0, std^2) drawn per image (three `np.random.normal(0, std)` draws).

    eigvals (C,), eigvecs (C, C) columns: the principal components of the pixel colours of a
    training set; `PCAColorAugmentation.fit(images)` computes them (the eigendecomposition of
    the C x C covariance of all pixels).
    """

    def __init__(self, eigvals, eigvecs, std: float = 0.1, layout: str = "HWC"):
        self.eigvals = np.asarray(eigvals, dtype=np.float64)
        self.eigvecs = np.asarray(eigvecs, dtype=np.float64)
        c = self.eigvals.shape[0]
        if self.eigvals.ndim != 1 or self.eigvecs.shape != (c, c):
            raise ValueError(f"PCAColorAugmentation: need eigvals (C,) and eigvecs (C, C), got "
                             f"{self.eigvals.shape} and {self.eigvecs.shape}")
        if std < 0:
            raise ValueError(f"PCAColorAugmentation: std must be >= 0, got {std}")
        self.std = float(std)
        self.layout = _check_layout("PCAColorAugmentation", layout)

    @classmethod
    def fit(cls, images, std: float = 0.1, layout: str = "HWC") -> "PCAColorAugmentation":
        """Principal components of the colours of `images` (a batch, N x H x W x C or
        N x C x H x W)."""
        images = np.asarray(images, dtype=np.float64)
        if images.ndim != 4:
            raise ValueError(f"PCAColorAugmentation.fit: expected a batch of images (4-D), got "
                             f"shape {images.shape}")
        channel = _spatial_axes(_check_layout("PCAColorAugmentation", layout), 4)[2]
        pixels = np.moveaxis(images, channel, -1).reshape(-1, images.shape[channel])
        eigvals, eigvecs = np.linalg.eigh(np.cov(pixels, rowvar=False))
        return cls(np.clip(eigvals, 0.0, None), eigvecs, std, layout)

    def shift(self, alpha) -> np.ndarray:
        """The colour offset (C,) for component weights `alpha` (C,)."""
        return self.eigvecs @ (np.asarray(alpha, dtype=np.float64) * self.eigvals)

    def __call__(self, img):
        img = _check_image("PCAColorAugmentation", img)
        c = self.eigvals.shape[0]
        channel = _spatial_axes(self.layout, img.ndim)[2]
        if img.shape[channel] != c:
            raise ValueError(f"PCAColorAugmentation: image of shape {img.shape} has "
                             f"{img.shape[channel]} channels, the components {c}")
        n = 1 if img.ndim == 3 else img.shape[0]
        alphas = np.random.normal(0.0, self.std, size=(n, c))
        shifts = alphas * self.eigvals @ self.eigvecs.T  # (n, C)
        shape = [1] * img.ndim
        shape[channel] = c
        if img.ndim == 4:
            shape[0] = n
        dtype = img.dtype if img.dtype.kind == "f" else np.float32
        return (img.astype(dtype) + shifts.reshape(shape).astype(dtype)).astype(dtype)


def tta_views(batch, mode: str = "flip", padding: int = 2, layout: str = "CHW") -> list:
    """Deterministic views of a batch for test-time augmentation (AlexNet's ten patches,
    kept at the input size so that a fixed-size model can read them).

    "flip": the batch and its horizontal mirror (2 views); "crop": the batch shifted by
    (0, 0), (-p, -p), (-p, p), (p, -p), (p, p) with zero fill (the centre and four corner
    crops of the zero-padded image, as RandomCrop's shifts) and the mirror of each (10 views).
    """
    batch = _check_image("tta_views", batch)
    if batch.ndim != 4:
        raise ValueError(f"tta_views: expected a batch (4-D), got shape {batch.shape}")
    layout = _check_layout("tta_views", layout)
    width_axis = _spatial_axes(layout, 4)[1]
    if mode == "flip":
        return [batch, np.flip(batch, axis=width_axis).copy()]
    if mode != "crop":
        raise ValueError(f"tta_views: mode must be 'flip' or 'crop', got {mode!r}")
    crop = RandomCrop(padding, layout=layout)
    p = int(padding)
    views = []
    for r, c in ((0, 0), (-p, -p), (-p, p), (p, -p), (p, p)):
        shifted = np.stack([crop._shift(x, r, c) for x in batch])
        views += [shifted, np.flip(shifted, axis=width_axis).copy()]
    return views


def tta_predict(model, batch, mode: str = "flip", padding: int = 2, layout: str = "CHW",
                device=None):
    """The model's class probabilities averaged over `tta_views(batch, mode)`: a Tensor
    (N, K) = mean over views of softmax(model(view)). Run it in eval mode under no_grad."""
    from ..autograd import Tensor
    from .. import ops

    total = None
    views = tta_views(batch, mode, padding, layout)
    for view in views:
        x = Tensor(np.ascontiguousarray(view, dtype=np.float32), device=device,
                   requires_grad=False)
        probs = ops.softmax(model(x))
        total = probs if total is None else total + probs
    return total / len(views)
