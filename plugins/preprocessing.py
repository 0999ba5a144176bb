"""Input-transformation defenses attacked adaptively: feature squeezing, spatial smoothing,
JPEG.

Each defense transforms every input before the model sees it. Rounding and JPEG
quantisation have no useful gradient (flat almost everywhere), so a gradient attack that
differentiates through them sees masked gradients and overstates robustness. They
deploy the identity as their gradient stand-in instead (``model.deploy(pre=...,
gradient=lambda x: x)``): the Backward Pass Differentiable Approximation of Athalye,
Carlini & Wagner, 2018, "Obfuscated Gradients Give a False Sense of Security" — the
forward pass is the defense's, the backward pass treats the transform as ``x``, which it
roughly is. Attacks that read ``loss_gradient`` or ``to_art()`` differentiate through
the stand-in without knowing it is there, so their numbers are adaptive; the runner also
reports the naive number (the attack made against the undefended model) beside them.
The median filter is piecewise linear, not flat, so attacks differentiate it directly by
default (see :class:`SpatialSmoothing`).

The transforms are torch modules working on a float batch; JPEG goes through Pillow.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gauntlet import Dataset, Defense, Model, NotApplicable, Stage, hookimpl, param

_BPDA = ("Adaptive (BPDA): gradient attacks differentiate the deployed model with the "
         "identity standing in for {what} in the backward pass (Athalye et al., 2018), "
         "while every forward pass and every prediction goes through {what} itself.")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _require_images(model: Model, what: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of the model's inputs, or NotApplicable for non-image inputs."""
    if len(model.input_shape) != 3:
        raise NotApplicable(f"{what} needs image inputs shaped (C, H, W); this model's "
                            f"inputs are shaped {model.input_shape}")
    c, h, w = model.input_shape
    return c, h, w


# -- transforms ----------------------------------------------------------------------


class BitDepth(nn.Module):
    """Each value rounded to one of ``2**bits`` evenly spaced levels over the valid range."""

    def __init__(self, bits: int, clip_values: tuple[float, float]) -> None:
        super().__init__()
        self.levels = 2 ** int(bits) - 1
        self.low, self.high = (float(v) for v in clip_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        span = (self.high - self.low) or 1.0
        u = ((x - self.low) / span).clamp(0.0, 1.0)
        return torch.round(u * self.levels) / self.levels * span + self.low


class MedianFilter(nn.Module):
    """A ``window`` x ``window`` median over each channel, edges extended by reflection:
    the same values as ``scipy.ndimage.median_filter(x, size=(1, 1, w, w))`` (its
    ``reflect`` mode, and its upper median for an even window)."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = int(window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.window
        if w == 1:
            return x
        before, after = w // 2, w - 1 - w // 2  # scipy's window placement (origin 0)
        padded = _symmetric_pad(_symmetric_pad(x, before, after, dim=2), before, after, dim=3)
        n, c, h, width = x.shape
        patches = padded.unfold(2, w, 1).unfold(3, w, 1)  # (N, C, H, W, w, w)
        flat = patches.reshape(n, c, h, width, w * w)
        return flat.kthvalue(w * w // 2 + 1, dim=-1).values  # scipy's rank: size // 2


def _symmetric_pad(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Pad ``dim`` by mirroring with the edge value repeated (numpy's ``symmetric``,
    scipy's ``reflect``)."""
    parts = []
    if before:
        parts.append(x.narrow(dim, 0, before).flip(dim))
    parts.append(x)
    if after:
        parts.append(x.narrow(dim, x.shape[dim] - after, after).flip(dim))
    return torch.cat(parts, dim=dim) if len(parts) > 1 else x


class JpegRoundTrip(nn.Module):
    """Each image saved as a JPEG of the given quality and read back (Pillow), with the
    valid range mapped to 8-bit levels.

    Batched where JPEG allows: a grayscale JPEG is coded in independent 8x8 blocks, so when
    the image height and width are multiples of 8, a stack of images is one JPEG with the
    same result per image as one JPEG each. Otherwise, and for colour (whose decoder
    upsamples chroma across block edges), each image is its own JPEG.
    """

    #: The tallest image Pillow's JPEG encoder takes.
    MAX_SIDE = 65500

    def __init__(self, quality: int, clip_values: tuple[float, float]) -> None:
        super().__init__()
        self.quality = int(quality)
        self.low, self.high = (float(v) for v in clip_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        span = (self.high - self.low) or 1.0
        u = ((x.detach().cpu().double() - self.low) / span).clamp(0.0, 1.0)
        q = np.rint(u.numpy() * 255.0).astype(np.uint8)  # (N, C, H, W)
        n, c, h, w = q.shape
        if n == 0:
            return x.clone()
        if c == 3:  # colour: one RGB JPEG per image
            out = np.stack([self._round_trip(img, "RGB") for img in q.transpose(0, 2, 3, 1)])
            out = out.transpose(0, 3, 1, 2)
        else:  # every channel a grayscale JPEG
            out = self._grayscale(q.reshape(n * c, h, w)).reshape(n, c, h, w)
        back = torch.from_numpy(out.astype(np.float32) / 255.0)
        return (back * span + self.low).to(dtype=x.dtype, device=x.device)

    def _grayscale(self, images: np.ndarray) -> np.ndarray:
        """JPEG round trip of each ``(H, W)`` uint8 image, stacked where blocks allow."""
        h, w = images.shape[1:]
        if h % 8 or w % 8 or h > self.MAX_SIDE:
            return np.stack([self._round_trip(img, "L") for img in images])
        per = self.MAX_SIDE // h  # images per stacked JPEG
        out = [self._round_trip(chunk.reshape(-1, w), "L").reshape(chunk.shape)
               for chunk in (images[s:s + per] for s in range(0, len(images), per))]
        return np.concatenate(out) if out else images.copy()

    def _round_trip(self, image: np.ndarray, mode: str) -> np.ndarray:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=self.quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert(mode))


# -- defenses ------------------------------------------------------------------------


class FeatureSqueezing(Defense):
    """Feature squeezing by bit-depth reduction: each input value rounded to 2**bits levels.

    Xu, Evans & Qi, 2018, "Feature Squeezing: Detecting Adversarial Examples in Deep
    Neural Networks" (here as a pre-processing that classifies the squeezed input; their
    detector compares predictions before and after squeezing). They squeeze MNIST to one
    bit; the default here is two bits (four levels), because the digits data has 17
    grey levels on 8x8 images and one bit costs more clean accuracy on it.
    """

    name = "feature-squeezing"
    stage = Stage.INPUT
    adaptive = True  # BPDA: the identity stands in for the rounding in the backward pass
    evaluation = _BPDA.format(what="the bit-depth reduction")
    bits: int = param(2, "bits per input value after squeezing (2**bits levels over the "
                      "valid range)", ge=1, le=16)

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        return model.deploy(pre=BitDepth(self.bits, model.clip_values), gradient=_identity)


class SpatialSmoothing(Defense):
    """Spatial smoothing: a median filter over each channel of the image.

    Xu, Evans & Qi, 2018, "Feature Squeezing: Detecting Adversarial Examples in Deep
    Neural Networks" (median smoothing as a squeezer; 2x2 on MNIST). The default window is
    3 (centred): on the 8x8 digits the builtin CNN keeps 80% clean accuracy behind it
    (99% without), against 69% behind 2x2, whose even window also shifts the image by half
    a pixel. A model trained on smoothed inputs would lose less; this one was not.

    Unlike rounding and JPEG, a median is piecewise linear: its gradient is exact almost
    everywhere (each output's goes to its window's median value), so it is not masked.
    Measured on 300 digits rows, PGD through the median itself leaves 21% robust accuracy at
    eps 0.1 and 0.7% at 0.2, against 37% and 3.3% through the identity stand-in (BPDA), so
    attacks differentiate the median by default (``backward="median"``); FGSM alone does
    better with the identity (5% against 20% at eps 0.2), because the median's gradient is
    zero for every value that is not a window's median.
    """

    name = "spatial-smoothing"
    stage = Stage.INPUT
    adaptive = True  # gradients pass through the median itself (or the identity: BPDA)
    evaluation = (
        "Adaptive: gradient attacks differentiate the deployed model through the median "
        "filter itself, which is piecewise linear and so not masked (the stronger attack "
        "here; backward=identity uses the BPDA identity stand-in instead)."
    )
    window: int = param(3, "side of the square median window, in pixels", ge=1)
    backward: str = param("median", "what gradient attacks differentiate: median: the "
                          "filter itself (exact almost everywhere); identity: BPDA's "
                          "identity stand-in", choices=("median", "identity"))

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        _, h, w = _require_images(model, "spatial smoothing")
        if self.window > min(h, w):
            raise NotApplicable(f"a median window of {self.window} pixels is larger than "
                                f"the {h}x{w} images")
        stand_in = _identity if self.backward == "identity" else None
        return model.deploy(pre=MedianFilter(self.window), gradient=stand_in)


class JpegCompression(Defense):
    """JPEG compression: each input image saved as a JPEG and decoded before classification.

    Guo, Rana, Cisse & van der Maaten, 2018, "Countering Adversarial Images using Input
    Transformations" (quality 75, their setting, is the default).
    """

    name = "jpeg"
    stage = Stage.INPUT
    adaptive = True  # BPDA: the identity stands in for the JPEG round trip
    evaluation = _BPDA.format(what="the JPEG round trip")
    quality: int = param(75, "JPEG quality (1-95; lower compresses more)", ge=1, le=95)

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        _require_images(model, "JPEG compression")
        return model.deploy(pre=JpegRoundTrip(self.quality, model.clip_values),
                            gradient=_identity)


@hookimpl
def register_defenses(register: Callable[[type[Defense]], None]) -> None:
    for cls in (FeatureSqueezing, SpatialSmoothing, JpegCompression):
        register(cls)
