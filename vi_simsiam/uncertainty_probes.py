"""Inputs that ask kappa harder questions than the held-out split does (issue 14, item 3).

Every construction maps held-out images (N, C, H, W) in [0, 1], before normalization, to new inputs
of the same shape, for any channel count and size (digits 1x8x8, CIFAR 3x32x32, ImageNet 3x224x224),
and is a fixed function of its ``seed``:

- ambiguous inputs: ``mix`` blends each image with a held-out image of another class
  (``partner_indices``) at ratio r in ``MIXING_RATIOS``: (1 - r) a + r b; at r = 0.5 neither class wins;
- out-of-distribution inputs (``OOD_KINDS``): noise with the images' own mean and spread, uniform
  noise, blank images, inverted images, each image's pixels shuffled (its histogram kept, its shape
  lost), images rotated by 90 degrees, and letters drawn with PIL the way scikit-learn's digits were
  made (a glyph on a 32x32 canvas averaged over 4x4 blocks at 8x8);
- augmentation strength (``augmentation_at``): the training augmentation with each of its parts
  scaled by a strength s (0 = none, 1 = what training used, 2 = twice as strong), all parts together
  or one at a time (``AUGMENTATION_COMPONENTS``): the paper's "impact of data augmentations on
  uncertainty" (Nakamura et al. 2023, Sec. 5).

The digits augmentation is applied to a whole batch at once (``augment_digits``: the same warp,
contrast, noise and erasing as ``augmentations.DigitsAugmentation``, whose parameters it reads, with
one draw of random numbers per image): per image it costs ~0.2-0.9 ms here, and the probes augment
~40 000 images. A test checks the two agree image by image given the same random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .augmentations import DigitsAugmentation

MIXING_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
AUGMENTATION_STRENGTHS = (0.0, 0.5, 1.0, 1.5, 2.0)  # the whole training augmentation
COMPONENT_STRENGTHS = (0.0, 1.0, 2.0)  # one part of it at a time (fewer levels: each level is a set of inputs)
# Letters whose shapes are not digits' (no O/I/S/Z/B/G/Q, which a digit model may read as 0/1/5/2/8/6/9).
LETTERS = "ACEFHKLMNPRTUVWXY"


# ---------------------------------------------------------------------------- ambiguous inputs
def partner_indices(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N,) labels -> (N,) indices j with labels[j] != labels[i], drawn uniformly per image (seeded)."""
    labels = torch.as_tensor(labels)
    if labels.unique().numel() < 2:
        raise ValueError("mixing needs held-out images of at least two classes")
    generator = torch.Generator().manual_seed(seed)
    partners = torch.empty(len(labels), dtype=torch.long)
    for label in labels.unique(sorted=True):
        own = (labels == label).nonzero().squeeze(1)
        others = (labels != label).nonzero().squeeze(1)
        partners[own] = others[torch.randint(len(others), (len(own),), generator=generator)]
    return partners


def mix(images: torch.Tensor, partners: torch.Tensor, ratio: float) -> torch.Tensor:
    """(1 - ratio) * images + ratio * partners: ratio 0 is the image itself, 0.5 an even blend."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mixing ratio must be in [0, 1]; got {ratio}")
    return (1.0 - ratio) * images + ratio * partners


# ---------------------------------------------------------------------------- out-of-distribution inputs
def gaussian_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-pixel Gaussian noise with the images' per-channel mean and standard deviation, clamped to [0, 1]."""
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.std(dim=(0, 2, 3), keepdim=True)
    return (mean + std * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def uniform_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(images.shape, generator=generator)


def blank(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One level per image and channel, uniform in [0, 1]: no structure at all."""
    n, c = images.shape[:2]
    return torch.rand(n, c, 1, 1, generator=generator).expand(images.shape).contiguous()


def inverted(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return 1.0 - images


def shuffled_pixels(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image's pixel positions permuted (one permutation per image, shared by its channels)."""
    n, c, h, w = images.shape
    order = torch.rand(n, h * w, generator=generator).argsort(dim=1)
    flat = images.reshape(n, c, h * w)
    return flat.gather(2, order[:, None, :].expand(n, c, h * w)).reshape(images.shape)


def rotated(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotated by 90 degrees (square images), upside down otherwise: the images' strokes in a pose never trained on."""
    if images.shape[-1] == images.shape[-2]:
        return torch.rot90(images, 1, dims=(-2, -1)).contiguous()
    return images.flip(-2)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # FreeType (Pillow >= 10.1): a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # the small bitmap font: the glyph is scaled to the canvas below


def letters(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Capital letters (``LETTERS``) drawn with PIL, filling the frame as a digit does.

    Drawn on a canvas of ``factor`` x the image size (32 px for 8x8, as scikit-learn's digits
    were drawn before their 4x4 block counts) and averaged down by ``factor``. One channel: a white
    glyph on black (the digits' polarity); three channels: a random glyph colour on a random
    background colour.
    """
    from PIL import Image, ImageDraw

    n, c, h, w = images.shape
    factor = max(1, 32 // min(h, w))
    canvas_h, canvas_w = h * factor, w * factor
    font = _font(max(8, int(0.9 * canvas_h)))
    choice = torch.randint(len(LETTERS), (n,), generator=generator)
    colours = torch.rand(n, 2, c, generator=generator)
    out = torch.empty(n, c, h, w)
    for i in range(n):
        glyph = Image.new("L", (canvas_w * 2, canvas_h * 2), 0)
        draw = ImageDraw.Draw(glyph)
        draw.text((canvas_w // 2, canvas_h // 2), LETTERS[choice[i]], fill=255, font=font,
                  stroke_width=max(1, canvas_h // 16), stroke_fill=255)
        box = glyph.getbbox()
        glyph = glyph.crop(box)
        # fill 80% of the frame's height (or width), keeping the glyph's aspect, centred
        scale = 0.8 * min(canvas_h / glyph.height, canvas_w / glyph.width)
        glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.BILINEAR)
        frame = Image.new("L", (canvas_w, canvas_h), 0)
        frame.paste(glyph, ((canvas_w - glyph.width) // 2, (canvas_h - glyph.height) // 2))
        ink = torch.frombuffer(bytearray(frame.tobytes()), dtype=torch.uint8).float().view(1, 1, canvas_h, canvas_w) / 255
        ink = F.avg_pool2d(ink, factor)[0] if factor > 1 else ink[0]
        if c == 1:
            out[i] = ink
        else:
            foreground, background = colours[i, 0].view(c, 1, 1), colours[i, 1].view(c, 1, 1)
            out[i] = background + (foreground - background) * ink
    return out


OOD_KINDS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "uniform_noise": uniform_noise,
    "blank": blank,
    "inverted": inverted,
    "shuffled_pixels": shuffled_pixels,
    "rotated_90": rotated,
    "letters": letters,
}


def out_of_distribution(images: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """Inputs of ``kind`` (a key of ``OOD_KINDS``), as many and shaped as ``images``, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return OOD_KINDS[kind](images.float(), generator).clamp(0, 1)


# ---------------------------------------------------------------------------- augmentation strength
# The parts of each training augmentation that a strength scales (augmentation_at).
AUGMENTATION_COMPONENTS = {
    "digits": ("geometry", "contrast", "noise", "erasing"),
    "cifar": ("crop", "colour"),
    "imagenet": ("crop", "colour", "blur"),
}


def digits_augmentation_at(strength: float, component: str = "all") -> DigitsAugmentation:
    """``DigitsAugmentation`` with the chosen part(s) scaled by ``strength``; the others off.

    Strength 1 with ``component="all"`` is the training augmentation itself. Zoom range and
    rotation scale in log-zoom and degrees, contrast range in its distance from 1 (floored at 0),
    noise in its standard deviation, erasing in its probability.
    """
    default = DigitsAugmentation()
    on = {part: component in ("all", part) for part in AUGMENTATION_COMPONENTS["digits"]}
    s = float(strength)
    g, k, z, e = (s if on[p] else 0.0 for p in ("geometry", "contrast", "noise", "erasing"))
    lo, hi = default.contrast
    return DigitsAugmentation(
        zoom=(default.zoom[0] ** g, default.zoom[1] ** g),
        degrees=default.degrees * g,
        shift=default.shift * g,
        noise_std=default.noise_std * z,
        noise_p=default.noise_p if z > 0 else 0.0,
        erase_p=min(1.0, default.erase_p * e),
        # written so that strength 1 gives the training range exactly
        contrast=(max(0.0, lo + (1 - lo) * (1 - k)), hi + (hi - 1) * (k - 1)),
    )


def augment_digits(
    images: torch.Tensor,
    augmentation: DigitsAugmentation,
    uniforms: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """``augmentation`` applied to a batch (B, C, H, W) given its random numbers.

    ``uniforms`` (B, 9) are what ``DigitsAugmentation.__call__`` draws with ``torch.rand(9)`` per
    image, ``noise`` (B, C, H, W) its ``randn_like`` (read only where uniforms[:, 5] < noise_p).
    """
    a = augmentation
    b, c, h, w = images.shape
    u = uniforms.double()
    log_lo, log_hi = math.log(a.zoom[0]), math.log(a.zoom[1])
    zoom = (log_lo + (log_hi - log_lo) * u[:, 0]).exp()
    angle = a.degrees * (2 * u[:, 1] - 1) * (math.pi / 180)  # math.radians' rounding
    tx, ty = (2 * u[:, 2] - 1) * a.shift * 2 / w, (2 * u[:, 3] - 1) * a.shift * 2 / h
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(images.dtype)
    grid = F.affine_grid(theta, (b, c, h, w), align_corners=False)
    out = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    contrast = (a.contrast[0] + (a.contrast[1] - a.contrast[0]) * u[:, 4]).to(images.dtype)
    out = out * contrast.view(b, 1, 1, 1)
    noisy = (uniforms[:, 5] < a.noise_p).view(b, 1, 1, 1)
    out = torch.where(noisy, out + a.noise_std * noise.to(images.dtype), out)
    # an erased 2x2 or 3x3 patch, placed as DigitsAugmentation places it
    size = 2 + (u[:, 7] * 2).long()
    cells = (u[:, 8] * (h - size + 1) * (w - size + 1)).long()
    top, left = cells // (w - size + 1), cells % (w - size + 1)
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((rows >= top.view(b, 1, 1)) & (rows < (top + size).view(b, 1, 1))
              & (cols >= left.view(b, 1, 1)) & (cols < (left + size).view(b, 1, 1)))
    erase = inside & (uniforms[:, 6] < a.erase_p).view(b, 1, 1)
    return out.masked_fill(erase[:, None], 0.0)


def _v2_augmentation_at(kind: str, image_size: int, strength: float, component: str, channels: int):
    """The cifar/imagenet training augmentation (``augmentations.cifar_transforms`` /
    ``imagenet_transforms``, without normalization) with the chosen part(s) scaled by ``strength``.

    crop: the smallest crop area 0.2 ** s (0.2 at s = 1, the whole image at 0), the aspect range
    (3/4, 4/3) ** s, a horizontal flip for s > 0; colour: jitter 0.4 s (hue 0.1 s, at most 0.5) with
    p 0.8 and greyscale with p 0.2 s; blur (imagenet): sigma 0.1 s - 2 s with p 0.5.
    """
    s = float(strength)
    on = {part: s > 0 and component in ("all", part) for part in ("crop", "colour", "blur")}
    steps = []
    if on["crop"]:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(0.2**s, 1.0), ratio=((3 / 4) ** s, (4 / 3) ** s), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    if on["colour"]:
        hue = min(0.5, 0.1 * s) if channels == 3 else 0.0
        steps.append(v2.RandomApply([v2.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s if channels == 3 else 0, hue)], p=0.8))
        if channels == 3:
            steps.append(v2.RandomGrayscale(p=min(1.0, 0.2 * s)))
    if on["blur"] and kind == "imagenet":
        radius = math.ceil((image_size // 20) * max(1.0, s))
        steps.append(v2.RandomApply([v2.GaussianBlur(2 * radius + 1, sigma=(0.1 * s, 2.0 * s))], p=0.5))
    return v2.Compose(steps) if steps else None


def augmentation_at(
    kind: str, image_size: int, strength: float, component: str = "all"
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """A batch augmentation ``(images (B, C, H, W) in [0, 1], seed) -> (B, C, H, W)``: the training
    augmentation of ``kind`` ("digits", "cifar", "imagenet") at ``strength``, all parts or one
    (``AUGMENTATION_COMPONENTS[kind]``). Random numbers come from a generator seeded by ``seed`` (digits)
    or from torch's global generator forked and seeded by it (torchvision's transforms), so the caller's
    random stream is untouched and equal seeds give equal views."""
    if component != "all" and component not in AUGMENTATION_COMPONENTS[kind]:
        raise ValueError(f"{kind} augmentation has no part {component!r}; parts: {AUGMENTATION_COMPONENTS[kind]}")
    if kind == "digits":
        augmentation = digits_augmentation_at(strength, component)

        def apply(images: torch.Tensor, seed: int) -> torch.Tensor:
            generator = torch.Generator().manual_seed(seed)
            uniforms = torch.rand(len(images), 9, generator=generator)
            noise = torch.randn(images.shape, generator=generator)
            return augment_digits(images, augmentation, uniforms, noise)

        return apply

    def apply_each(images: torch.Tensor, seed: int) -> torch.Tensor:
        transform = _v2_augmentation_at(kind, image_size, strength, component, images.shape[1])
        if transform is None:
            return images
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([transform(image) for image in images]).clamp(0, 1)

    return apply_each
