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
