"""The common corruptions of Hendrycks & Dietterich (ICLR 2019) with the CIFAR-10-C parameters, for 32x32 RGB.

"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations": 15 corruptions in four
groups (noise, blur, weather, digital), each at five severities, plus four extra ones (speckle_noise,
gaussian_blur, spatter, saturate). The severity parameters here are those of the released generator of
CIFAR-10-C (hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py); CIFAR-100-C was made with the same
ones. They are written out here because no maintained package has them: `imagecorruptions` (last release
2020) hard-codes the ImageNet-C parameters, fails on current NumPy/scikit-image for glass_blur, gaussian_blur
and fog, and pulls in OpenCV.

The generator's OpenCV, ImageMagick and scikit-image steps are done with scipy.ndimage and Pillow: Gaussian
filters keep scikit-image's border ('nearest', truncate 4), OpenCV's BORDER_REFLECT_101 is scipy's 'mirror',
ImageMagick's motion blur (a one-sided Gaussian line kernel, edge pixels repeated) and OpenCV's Canny edges,
distance transform and histogram equalisation (spatter) are re-implemented. Given the same random draws, the
outputs agree with the generator's within one grey level (impulse_noise aside: the generator takes its noise
from scikit-image's own unseeded source). Its quirks that shaped CIFAR-10-C are kept and marked in the code
(glass_blur copies pixels instead of swapping them, frost never picks its sixth picture, zoom factors come
from np.arange's inclusive float ends).

Every function takes a (32, 32, 3) uint8 image, a severity in 1..5 and a `numpy.random.Generator` (the only
source of randomness), and `corrupt` returns uint8 as the generator stored it (truncated, not rounded).
Frost blends in photographs of frost that are not part of this package: see `find_frost_pictures`.
"""
from __future__ import annotations

import functools
import importlib.util
from io import BytesIO
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from ..errors import ReproError

IMAGE_SIZE = 32
SEVERITIES = (1, 2, 3, 4, 5)

# In the order of the benchmark's tables; the mCE averages over these 15.
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


# --- helpers ---------------------------------------------------------------------------------------------

def _unit(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    return np.asarray(x, dtype=dtype) / 255.0


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's `filters.gaussian`: spatial axes only for an (H, W, C) image."""
    if sigma == 0:
        return x
    sigmas = (sigma, sigma, 0) if x.ndim == 3 else sigma
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    """OpenCV's getGaussianKernel(size, sigma) for sigma > 0: normalised samples at integer offsets."""
    offsets = np.arange(size) - (size - 1) / 2
    taps = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return taps / taps.sum()


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """An anti-aliased disk kernel (defocus blur): a normalised disk, smoothed by a small Gaussian."""
    grid = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    size = 3 if radius <= 8 else 5
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    taps = _gaussian_taps(size, alias_blur)
    for axis in (0, 1):
        disk = ndimage.correlate1d(disk, taps, axis=axis, mode="mirror")
    return disk


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by `factor` (bilinear) and crop back to the input's height and width."""
    h = x.shape[0]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    zoomed = ndimage.zoom(x[top:top + crop, top:top + crop], (factor, factor) + (1,) * (x.ndim - 2), order=1)
    trim = (zoomed.shape[0] - h) // 2
    return zoomed[trim:trim + h, trim:trim + h]


def _plasma_fractal(rng: np.random.Generator, mapsize: int = IMAGE_SIZE, wibbledecay: float = 3.0) -> np.ndarray:
    """A diamond-square height map in [0, 1] (the fog layer); `mapsize` is a power of two."""
    grid = np.empty((mapsize, mapsize))
    grid[0, 0] = 0.0
    step, wibble = mapsize, 100.0

    def jittered(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=0)
        square += np.roll(square, -1, axis=1)
        grid[half::step, half::step] = jittered(square)
        centres = grid[half::step, half::step]
        grid[0::step, half::step] = jittered((centres + np.roll(centres, 1, axis=0))
                                             + (corners + np.roll(corners, -1, axis=1)))
        grid[half::step, 0::step] = jittered((centres + np.roll(centres, 1, axis=1))
                                             + (corners + np.roll(corners, -1, axis=0)))
        step = half
        wibble /= wibbledecay
    grid -= grid.min()
    return grid / grid.max()


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage on an 8-bit (H, W) or (H, W, C) image, back to 8 bits.

    A one-sided Gaussian line kernel of 2*ceil(radius)+1 taps (the first on the pixel itself) along `angle`
    degrees, with pixels beyond the border repeated from the edge.
    """
    width = int(2 * np.ceil(radius) + 1)
    steps = np.arange(width)
    weights = np.exp(-steps ** 2 / (2.0 * sigma ** 2))
    weights /= weights.sum()
    theta = np.deg2rad(angle)
    dx = np.ceil(steps * np.cos(theta) - 0.5).astype(int)
    dy = np.ceil(steps * np.sin(theta) - 0.5).astype(int)
    h, w = x.shape[:2]
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    src = x.astype(np.float64)
    out = np.zeros_like(src)
    for k, ox, oy in zip(weights, dx, dy):
        out += k * src[np.clip(rows + oy, 0, h - 1), np.clip(cols + ox, 0, w - 1)]
    # ImageMagick's 8-bit output truncates; its intermediate rounding stays within a thousandth of a level.
    return np.clip(np.floor(out + 1e-3), 0, 255)


def _rgb_to_gray(x: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, as OpenCV's RGB2GRAY."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _hsv_apply(x: np.ndarray, fn: Callable[[np.ndarray], None]) -> np.ndarray:
    """Convert to HSV, let `fn` edit the array in place, convert back."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(x)
    fn(hsv)
    return hsv_to_rgb(hsv)


def _pil(x: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.asarray(x, dtype=np.uint8))


# --- noise -----------------------------------------------------------------------------------------------

def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise."""
    c = [0.04, 0.06, .08, .09, .10][severity - 1]
    x = _unit(x)
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson (photon) noise."""
    c = [500, 250, 100, 75, 50][severity - 1]
    x = _unit(x)
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise on each channel value (scikit-image's random_noise 's&p', half salt)."""
    c = [.01, .02, .03, .05, .07][severity - 1]
    x = _unit(x)
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out * 255


def speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative Gaussian noise (extra corruption)."""
    c = [.06, .1, .12, .16, .2][severity - 1]
    x = _unit(x)
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255


# --- blur ------------------------------------------------------------------------------------------------

def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Convolution with an anti-aliased disk."""
    radius, alias_blur = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    x = _unit(x)
    kernel = _disk(radius, alias_blur)
    out = np.stack([ndimage.correlate(x[..., ch], kernel, mode="mirror") for ch in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, local pixel shuffling, Gaussian blur again."""
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    h, w = x.shape[:2]
    blurred = (_gaussian(_unit(x), sigma) * 255).astype(np.uint8)
    positions = [(r, c) for r in range(h - delta, delta, -1) for c in range(w - delta, delta, -1)]
    # Displacements in [-delta, delta): the generator's randint excludes the upper bound.
    shifts = rng.integers(-delta, delta, size=(iterations, len(positions), 2))
    pixels = blurred.reshape(h * w, -1).tolist()
    for it in range(iterations):
        for (r, c), (dx, dy) in zip(positions, shifts[it]):
            # The generator's tuple "swap" of two NumPy views copies the neighbour into (r, c) and leaves the
            # neighbour as it was; CIFAR-10-C was made that way, so it is kept.
            pixels[r * w + c] = pixels[(r + dy) * w + (c + dx)]
    shuffled = np.asarray(pixels, dtype=np.uint8).reshape(x.shape)
    return np.clip(_gaussian(shuffled / 255.0, sigma), 0, 1) * 255


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur along a random direction within 45 degrees of horizontal."""
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    return _motion_blur(np.asarray(x), radius, sigma, rng.uniform(-45, 45))


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Average of centre zooms (the first factor, 1, counts the image twice)."""
    # The same np.arange calls as the generator: their float end points add one more factor (e.g. 1.06).
    factors = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
               np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)][severity - 1]
    x = _unit(x, np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (extra corruption)."""
    sigma = [.4, .6, 0.7, .8, 1][severity - 1]
    return np.clip(_gaussian(_unit(x), sigma), 0, 1) * 255


# --- weather ---------------------------------------------------------------------------------------------

def snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Motion-blurred snow flakes over a brightened, greyed image."""
    loc, scale, zoom, threshold, radius, sigma, keep = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][severity - 1]
    x = _unit(x, np.float32)
    flakes = rng.normal(size=x.shape[:2], loc=loc, scale=scale)
    flakes = _clipped_zoom(flakes[..., None], zoom)
    flakes[flakes < threshold] = 0
    # The layer goes through an 8-bit grey picture, as in the generator.
    flakes = (np.clip(flakes[..., 0], 0, 1) * 255).astype(np.uint8)
    flakes = (_motion_blur(flakes, radius, sigma, rng.uniform(-135, -45)) / 255.0)[..., None]
    grey = _rgb_to_gray(x)[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def frost(x: np.ndarray, severity: int, rng: np.random.Generator,
          pictures: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """A random 32x32 crop of a frost photograph (scaled to a fifth) blended over the image."""
    if not pictures:
        raise ReproError("frost needs the six frost photographs of the corruption benchmark (frost1.png ... "
                         "frost6.jpg); pass their folder, or install them with `pip install --no-deps "
                         "imagecorruptions`")
    weight, frost_weight = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    # randint(5): the generator never picks the sixth picture.
    picture = pictures[rng.integers(5)]
    h, w = x.shape[:2]
    top, left = rng.integers(0, picture.shape[0] - h), rng.integers(0, picture.shape[1] - w)
    crop = picture[top:top + h, left:left + w]
    return np.clip(weight * np.asarray(x, dtype=np.float64) + frost_weight * crop, 0, 255)


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A plasma-fractal haze, renormalised to the image's maximum."""
    strength, decay = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    x = _unit(x)
    peak = x.max()
    h, w = x.shape[:2]
    x = x + strength * _plasma_fractal(rng, wibbledecay=decay)[:h, :w][..., None]
    return np.clip(x * peak / (peak + strength), 0, 1) * 255


def spatter(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Water drops (severities 1-3) or mud (4-5) splashed over the image (extra corruption)."""
    loc, scale, sigma, threshold, intensity, mud = [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)][severity - 1]
    x = _unit(x, np.float32)
    liquid = _gaussian(rng.normal(size=x.shape[:2], loc=loc, scale=scale), sigma)
    liquid[liquid < threshold] = 0
    if not mud:
        liquid = (liquid * 255).astype(np.uint8)
        dist = _distance_to_edges(liquid)
        dist = _box3(np.minimum(dist, 20)).astype(np.uint8)
        dist = _equalize_hist(dist)
        relief = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)
        dist = np.clip(np.rint(ndimage.correlate(dist.astype(np.float64), relief, mode="mirror")), 0, 255)
        dist = _box3(dist.astype(np.uint8)).astype(np.float32)
        mask = liquid * dist
        peak = mask.max()
        mask = (mask / peak if peak > 0 else mask) * intensity
        # Pale turquoise water.
        colour = np.array([175, 238, 238], dtype=np.float32) / 255.0
        return np.clip(x + mask[..., None] * colour, 0, 1) * 255
    mask = _gaussian(np.where(liquid > threshold, 1, 0).astype(np.float32), intensity)
    mask[mask < 0.8] = 0
    # Mud brown.
    colour = np.array([63, 42, 20], dtype=np.float32) / 255.0
    return np.clip(x * (1 - mask[..., None]) + colour * mask[..., None], 0, 1) * 255


def _box3(x: np.ndarray) -> np.ndarray:
    """OpenCV's blur(x, (3, 3)): a 3x3 mean with reflect-101 borders (rounded for 8-bit input)."""
    # A double-precision sum times 1/9, as OpenCV's box filter: truncating its float result to 8 bits later
    # depends on this rounding.
    out = ndimage.correlate(x.astype(np.float64), np.ones((3, 3)), mode="mirror") * (1.0 / 9)
    return np.rint(out) if x.dtype == np.uint8 else out.astype(np.float32)


def _distance_to_edges(gray: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the nearest Canny edge (50/150) of an 8-bit image, as OpenCV's
    distanceTransform(DIST_L2, 5) measures it: a 5x5 chamfer (steps 1, 1.4, 2.1969) in 16-bit fixed point."""
    far = _canny(gray, 50, 150) == 0
    steps = {1: 65536, 2: 91750, 3: 143976}  # cvRound(metric * 2**16) of 1, 1.4 and 2.1969
    # (row offset, column offset, step) of the neighbours a pass has already visited in earlier rows.
    above = [(-2, -1, 3), (-2, 1, 3), (-1, -2, 3), (-1, -1, 2), (-1, 0, 1), (-1, 1, 2), (-1, 2, 3)]
    big = np.iinfo(np.uint32).max - steps[3]
    h, w = far.shape
    dist = np.full((h + 4, w + 4), big, dtype=np.int64)  # two rows and columns of border on each side
    cols = np.arange(w)
    for sweep in (1, -1):  # forward (top-left to bottom-right), then backward
        rows = range(h) if sweep == 1 else range(h - 1, -1, -1)
        for r in rows:
            best = dist[r + 2, 2:w + 2] if sweep == -1 else np.where(far[r], big, 0)
            for dr, dc, step in above:
                dr, dc = dr * sweep, dc * sweep
                best = np.minimum(best, dist[r + 2 + dr, 2 + dc:2 + dc + w] + steps[step])
            # The neighbour in the same row is final by the time a pixel is visited: a running min-plus scan.
            line = best if sweep == 1 else best[::-1]
            line = np.minimum.accumulate(line - steps[1] * cols) + steps[1] * cols
            dist[r + 2, 2:w + 2] = np.minimum(line if sweep == 1 else line[::-1], big)
    return (dist[2:h + 2, 2:w + 2] * np.float32(1.0 / 65536)).astype(np.float32)


def _canny(gray: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV's Canny edges (3x3 Sobel, L1 gradient magnitude, non-maximum suppression, hysteresis)."""
    img = gray.astype(np.float64)
    gx = ndimage.sobel(img, axis=1, mode="nearest")
    gy = ndimage.sobel(img, axis=0, mode="nearest")
    mag = np.abs(gx) + np.abs(gy)
    padded = np.pad(mag, 1)
    h, w = mag.shape
    shifted = {(dr, dc): padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
    ax, ay = np.abs(gx), np.abs(gy)
    tan22, tan67 = np.tan(np.deg2rad(22.5)), np.tan(np.deg2rad(67.5))
    horizontal = ay < tan22 * ax           # gradient along x: compare left/right neighbours
    vertical = ay > tan67 * ax             # gradient along y: compare up/down neighbours
    same_sign = (gx * gy) > 0
    peak = np.where(horizontal, (mag > shifted[0, -1]) & (mag >= shifted[0, 1]),
                    np.where(vertical, (mag > shifted[-1, 0]) & (mag >= shifted[1, 0]),
                             np.where(same_sign, (mag > shifted[-1, -1]) & (mag > shifted[1, 1]),
                                      (mag > shifted[-1, 1]) & (mag > shifted[1, -1]))))
    candidate = peak & (mag > low)
    labels, count = ndimage.label(candidate, structure=np.ones((3, 3)))
    if count == 0:
        return candidate
    strong = np.unique(labels[candidate & (mag > high)])
    return np.isin(labels, strong[strong > 0])


def _equalize_hist(x: np.ndarray) -> np.ndarray:
    """OpenCV's equalizeHist for an 8-bit image."""
    hist = np.bincount(x.ravel(), minlength=256)
    first = int(np.flatnonzero(hist)[0])
    total = x.size
    if hist[first] == total:
        return np.full_like(x, first)
    # Single precision, as OpenCV computes it (the rounding of a few levels depends on it).
    scale = np.float32(255.0) / np.float32(total - hist[first])
    cdf = np.cumsum(hist)
    lut = np.clip(np.rint((cdf - hist[first]).astype(np.float32) * scale), 0, 255).astype(np.uint8)
    lut[:first + 1] = 0
    return lut[x]


# --- digital ---------------------------------------------------------------------------------------------

def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Raise the HSV value channel."""
    c = [.05, .1, .15, .2, .3][severity - 1]

    def brighten(hsv):
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)

    return np.clip(_hsv_apply(_unit(x), brighten), 0, 1) * 255


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink each channel towards its mean."""
    c = [.75, .5, .4, .3, 0.15][severity - 1]
    x = _unit(x)
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def saturate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift the HSV saturation channel (extra corruption)."""
    factor, shift = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]

    def resaturate(hsv):
        hsv[..., 1] = np.clip(hsv[..., 1] * factor + shift, 0, 1)

    return np.clip(_hsv_apply(_unit(x), resaturate), 0, 1) * 255


def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A random affine warp followed by a smooth random displacement field."""
    size = IMAGE_SIZE
    alpha, sigma, jitter = [(size * 0, size * 0, size * 0.08), (size * 0.05, size * 0.2, size * 0.07),
                            (size * 0.08, size * 0.06, size * 0.06), (size * 0.1, size * 0.04, size * 0.05),
                            (size * 0.1, size * 0.03, size * 0.03)][severity - 1]
    image = _unit(x, np.float32)
    h, w, channels = image.shape
    centre, half = np.float32([h, w]) // 2, min(h, w) // 3
    # Three (x, y) anchor points, each moved by up to `jitter` pixels: an affine map from the moved points
    # back to the originals gives, for every output pixel, where to read the input (OpenCV's warpAffine).
    anchors = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    moved = anchors + rng.uniform(-jitter, jitter, size=anchors.shape).astype(np.float32)
    inverse = np.linalg.solve(np.c_[moved.astype(np.float64), np.ones(3)], anchors.astype(np.float64)).T
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    src_x = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
    src_y = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
    image = np.stack([ndimage.map_coordinates(image[..., ch], [src_y, src_x], order=1, mode="mirror")
                      for ch in range(channels)], axis=-1)
    dx = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha)
    dy = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha)
    dx, dy = dx.astype(np.float32)[..., None], dy.astype(np.float32)[..., None]
    xx, yy, zz = np.meshgrid(np.arange(w), np.arange(h), np.arange(channels))
    coords = [np.reshape(yy + dy, (-1, 1)), np.reshape(xx + dx, (-1, 1)), np.reshape(zz, (-1, 1))]
    warped = ndimage.map_coordinates(image, coords, order=1, mode="reflect").reshape(image.shape)
    return np.clip(warped, 0, 1) * 255


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample and box-upsample back (Pillow)."""
    from PIL import Image

    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    h, w = x.shape[:2]
    img = _pil(x).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(img)


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A JPEG round trip at low quality (Pillow)."""
    from PIL import Image

    quality = [80, 65, 58, 50, 40][severity - 1]
    buffer = BytesIO()
    _pil(x).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


CORRUPTION_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
    brightness, contrast, elastic_transform, pixelate, jpeg_compression, speckle_noise, gaussian_blur, spatter,
    saturate)}


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator, *,
            frost_pictures: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """One corrupted copy of a (32, 32, 3) uint8 image, as uint8 (values truncated, as the benchmark stored them)."""
    check_names([name])
    if severity not in SEVERITIES:
        raise ReproError(f"corruption severity must be one of 1-5, found {severity}")
    image = np.asarray(image)
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or image.dtype != np.uint8:
        raise ReproError(f"corruptions use the CIFAR parameters and need (32, 32, 3) uint8 images, found "
                         f"{image.shape} {image.dtype}; resize or convert the images first")
    fn = CORRUPTION_FUNCTIONS[name]
    out = fn(image, severity, rng, pictures=frost_pictures) if name == "frost" else fn(image, severity, rng)
    return np.asarray(out).astype(np.uint8)


def check_names(names: Sequence[str]) -> list[str]:
    """The names as a list, or a ReproError naming the unknown ones and the valid choices."""
    unknown = [n for n in names if n not in CORRUPTION_FUNCTIONS]
    if unknown:
        raise ReproError(f"unknown corruption {', '.join(unknown)}; choose from {', '.join(ALL_CORRUPTIONS)}")
    return list(names)


def parse_corruptions(text: str | None) -> list[str] | None:
    """Corruption names from a command line: comma-separated names, or all / main (the 15) / extra (the 4);
    None (all available) for None or empty text."""
    if not text or text.strip() == "all":
        return None
    groups = {"main": CORRUPTIONS, "extra": EXTRA_CORRUPTIONS}
    names: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        names += [n for n in groups.get(part, (part,)) if n not in names]
    return check_names(names)


def parse_severities(text: str | None) -> list[int] | None:
    """Severities from a command line ("1,3,5"); None (all five) for None or empty text."""
    if not text:
        return None
    try:
        values = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise ReproError(f"severities are comma-separated integers 1-5 (e.g. 1,3,5), found '{text}'") from None
    bad = [v for v in values if v not in SEVERITIES]
    if bad or not values:
        raise ReproError(f"severities are 1-5, found '{text}'")
    return values


# --- frost pictures --------------------------------------------------------------------------------------

def find_frost_pictures(folder: str | Path | None = None) -> Path | None:
    """The folder holding frost1.png ... frost6.jpg: `folder`, else the one shipped inside an installed
    `imagecorruptions` package (found without importing it, so its OpenCV dependency is not needed)."""
    if folder is not None:
        folder = Path(folder).expanduser()
        missing = [f for f in FROST_FILES[:5] if not (folder / f).is_file()]
        if missing:
            raise ReproError(f"frost pictures: {folder} lacks {', '.join(missing)}; expected the benchmark's "
                             f"{', '.join(FROST_FILES)}")
        return folder
    spec = importlib.util.find_spec("imagecorruptions")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "frost"
        if all((candidate / f).is_file() for f in FROST_FILES[:5]):
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def load_frost_pictures(folder: str | Path) -> tuple[np.ndarray, ...]:
    """The frost photographs as RGB arrays scaled to a fifth (bilinear, as OpenCV resizes them)."""
    from PIL import Image

    pictures = []
    for name in FROST_FILES:
        path = Path(folder) / name
        if path.is_file():
            with Image.open(path) as img:
                pictures.append(_resize_bilinear(np.asarray(img.convert("RGB")), 0.2))
    return tuple(pictures)


def _resize_bilinear(img: np.ndarray, scale: float) -> np.ndarray:
    """OpenCV's resize(fx=fy=scale, INTER_LINEAR): half-pixel centres, no anti-aliasing, rounded to 8 bits."""
    h, w = img.shape[:2]
    out_h, out_w = int(round(h * scale)), int(round(w * scale))
    src_y = np.clip((np.arange(out_h) + 0.5) / scale - 0.5, 0, h - 1)
    src_x = np.clip((np.arange(out_w) + 0.5) / scale - 0.5, 0, w - 1)
    yy, xx = np.meshgrid(src_y, src_x, indexing="ij")
    channels = [ndimage.map_coordinates(img[..., ch].astype(np.float64), [yy, xx], order=1, mode="nearest")
                for ch in range(img.shape[2])]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)
