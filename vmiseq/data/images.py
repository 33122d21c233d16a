"""Image data for the vision experiments: Fashion-MNIST from the Debian package, ImageNet-style
folders and HF ``datasets``, robust decoding of messy files, reproducible shuffling and
augmentation, and the paper's (DeiT/timm-style) transforms built from torchvision.

Nothing here downloads anything: the built-in set is a local Debian package and HF datasets
load from local files or an existing cache unless the user has internet.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import struct
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "sudo apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


# ---------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> Tensor:
    """Read a gzipped IDX file (the MNIST format) into a uint8 tensor."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise ValueError(f"{path}: expected an IDX file of unsigned bytes (magic 0x0801/0x0803), got 0x{magic:08x}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        raise ValueError(f"{path}: expected {math.prod(dims)} bytes of data for shape {dims}, got {len(body)} (truncated?)")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def load_fashion_mnist(root: Union[str, os.PathLike] = FASHION_MNIST_DIR) -> dict[str, tuple[Tensor, Tensor]]:
    """Fashion-MNIST as ``{"train": (images, labels), "test": (images, labels)}``.

    Images are uint8 (N, 1, 28, 28), labels int64 (N,). Raises ``FileNotFoundError`` with the
    install command when the Debian package is missing.
    """
    root = Path(root)
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    missing = [name for pair in files.values() for name in pair if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {str(root)!r} (missing {', '.join(missing)}). It comes from the "
            f"Debian package dataset-fashion-mnist; install it with:\n    {FASHION_MNIST_INSTALL}\n"
            "or pass --data DIR for your own image folder."
        )
    out = {}
    for split, (img, lab) in files.items():
        images, labels = _read_idx(root / img), _read_idx(root / lab)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{root / img}: {images.shape[0]} images but {labels.shape[0]} labels")
        out[split] = (images.unsqueeze(1).contiguous(), labels.long())
    return out


# ---------------------------------------------------------------------- robust decoding
def load_image(source: Union[str, os.PathLike, bytes], mode: str = "RGB"):
    """Open and fully decode an image with PIL, converted to ``mode``.

    The format is detected from the content, not the name (a PNG named ``.JPEG`` works);
    grayscale, CMYK, palette, 16-bit and alpha images are converted. Raises ``OSError`` /
    ``ValueError`` for files that cannot be decoded (truncated, not an image).
    """
    from PIL import Image

    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(fp) as img:
        img.load()  # decode now: truncated data fails here, not later inside a transform
        if img.mode == mode:
            return img.copy()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
            import numpy as np

            arr = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if arr.max() > 255 else 255.0
            img = Image.fromarray((arr * (255.0 / peak)).round().clip(0, 255).astype("uint8"), "L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            if mode == "RGB":  # composite on white: transparent pixels are not black
                bg = Image.new("RGB", img.size, (255, 255, 255))
                bg.paste(img, mask=img.split()[-1])
                return bg
        return img.convert(mode)


class _SkipBadFiles:
    """Shared logic: decode item ``i``; on failure warn once (naming the file) and move on to
    the next index, so one bad file never stops an epoch."""

    def _source(self, index: int) -> tuple[Any, str]:  # (what load_image reads, a name for messages)
        raise NotImplementedError

    def _decode_with_fallback(self, index: int):
        n = len(self)
        bad = self.__dict__.setdefault("_bad", set())
        for attempt in range(min(n, 64)):
            i = (index + attempt) % n
            if i in bad:
                continue
            source, name = self._source(i)
            try:
                return load_image(source, self.mode), i
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
                bad.add(i)
                warnings.warn(f"skipping unreadable image {name}: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
        raise RuntimeError(f"dataset: 64 consecutive images from index {index} could not be decoded; is the data corrupt?")


class ImageFolderSafe(_SkipBadFiles, Dataset):
    """``root/<class>/<image>`` folders (ImageNet's layout), robust to messy files.

    Args:
        root: the split directory (e.g. ``imagenet/train``).
        transform: applied to the PIL image. classes: class names to use (e.g. those of the
            train split, so val labels agree); default: the sorted sub-folders of ``root``.
        mode: PIL mode every image is converted to ("RGB" or "L").
    """

    def __init__(self, root: Union[str, os.PathLike], transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None, mode: str = "RGB") -> None:
        self.root, self.transform, self.mode = Path(root), transform, mode
        if not self.root.exists():
            raise FileNotFoundError(f"data: folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"data: expected a folder of class folders, got the file {str(self.root)!r}")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = list(classes) if classes is not None else found
        if not self.classes:
            raise ValueError(
                f"data: {str(self.root)!r} holds no class folders; expected {self.root}/<class name>/<image files>"
            )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for c in self.classes:
            d = self.root / c
            if not d.is_dir():
                continue
            for dirpath, _, files in os.walk(d):
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, f), self.class_to_idx[c]))
        if not self.samples:
            raise ValueError(
                f"data: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(self.root)!r}; "
                f"expected {self.root}/<class name>/<image files>"
            )
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _source(self, index: int):
        path = self.samples[index][0]
        return path, path

    def __getitem__(self, key):
        index, seed = _split_key(key)
        img, used = self._decode_with_fallback(index)
        return _apply(self.transform, img, seed), self.samples[used][1]


class HFImageDataset(_SkipBadFiles, Dataset):
    """A split of a HF ``datasets`` image dataset, decoded by :func:`load_image` (so messy
    files are skipped, not fatal). Image column: the first of type ``Image``; label column:
    ``label`` / ``labels`` / the first ``ClassLabel``."""

    def __init__(self, split, transform: Optional[Callable] = None, mode: str = "RGB") -> None:
        from datasets import ClassLabel
        from datasets import Image as HFImage

        self.transform, self.mode = transform, mode
        feats = split.features
        image_cols = [k for k, f in feats.items() if isinstance(f, HFImage)]
        label_cols = [k for k in ("label", "labels") if k in feats] or [k for k, f in feats.items() if isinstance(f, ClassLabel)]
        if not image_cols or not label_cols:
            raise ValueError(f"data: expected an image column and a label column, got columns {list(feats)}")
        self.image_col, self.label_col = image_cols[0], label_cols[0]
        self.split = split.cast_column(self.image_col, HFImage(decode=False))
        label_feat = feats[self.label_col]
        self.classes = list(label_feat.names) if isinstance(label_feat, ClassLabel) else sorted(set(self.split[self.label_col]))
        if len(self.split) == 0:
            raise ValueError("data: the dataset split is empty")

    def __len__(self) -> int:
        return len(self.split)

    def _source(self, index: int):
        item = self.split[index][self.image_col]
        name = item.get("path") or f"item {index}"
        return (item["bytes"] if item.get("bytes") is not None else item["path"]), name

    def __getitem__(self, key):
        index, seed = _split_key(key)
        img, used = self._decode_with_fallback(index)
        return _apply(self.transform, img, seed), int(self.split[used][self.label_col])


class TensorImageDataset(Dataset):
    """In-memory uint8 images (N, C, H, W) and labels, with a (tensor) transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None) -> None:
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images: expected (N, C, H, W) with N = len(labels) = {labels.shape[0]}, got {tuple(images.shape)}")
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = list(classes) if classes is not None else [str(i) for i in range(int(labels.max()) + 1)]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key):
        index, seed = _split_key(key)
        return _apply(self.transform, self.images[index], seed), int(self.labels[index])


def _split_key(key) -> tuple[int, Optional[int]]:
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


def _apply(transform: Optional[Callable], img, seed: Optional[int]):
    """Run ``transform`` with the global RNG seeded per sample when a seed is given, so the
    augmentation of (epoch, index) is the same whatever the workers, devices or resumes."""
    if transform is None:
        return img
    if seed is None:
        return transform(img)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(img)


# ---------------------------------------------------------------------- sampling
class SeededShardSampler(Sampler):
    """Shuffle with a permutation drawn from (seed, epoch), shard it over the DDP ranks and
    yield ``(index, per-sample seed)`` keys. Everything is a function of (seed, epoch), so a
    resumed run sees exactly the batches of an uninterrupted one.

    Lightning calls ``set_epoch`` every epoch. Rank and world size are read from
    ``torch.distributed`` when it is initialised (or given explicitly).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 rank: Optional[int] = None, world_size: Optional[int] = None, seed_samples: bool = True) -> None:
        if n <= 0:
            raise ValueError(f"n: expected a positive dataset size, got {n}")
        self.n, self.seed, self.shuffle, self.drop_last = n, seed, shuffle, drop_last
        self._rank, self._world = rank, world_size
        self.seed_samples = seed_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _dist(self) -> tuple[int, int]:
        if self._world is not None:
            return self._rank or 0, self._world
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._dist()
        return self.n // world if self.drop_last else -(-self.n // world)

    def __iter__(self) -> Iterator:
        rank, world = self._dist()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = len(self)
        total = per_rank * world
        if total > len(order):  # pad by wrapping so every rank gets the same number of samples
            order = order + order[: total - len(order)]
        order = order[:total]
        for pos in range(rank, total, world):
            i = order[pos]
            if self.seed_samples:
                yield i, (self.seed * 1_000_003 + self.epoch) * 100_003 + pos
            else:
                yield i


# ---------------------------------------------------------------------- transforms
def train_transform(img_size: int, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=(0.08, 1.0),
                    randaugment_magnitude: Optional[int] = 1, random_erasing: float = 0.25, hflip: float = 0.5):
    """The paper's training transform (timm/DeiT recipe, docs/design.md §2), from torchvision v2:
    RandomResizedCrop(scale 0.08-1, bicubic) + flip + RandAugment(2 ops, magnitude 1) +
    normalise + RandomErasing(0.25, per-pixel noise). MixUp/CutMix act on batches (see
    :func:`mixup_cutmix`)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    ops: list = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True)]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if randaugment_magnitude is not None:
        ops.append(v2.RandAugment(num_ops=2, magnitude=randaugment_magnitude, interpolation=InterpolationMode.BILINEAR))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if random_erasing > 0:
        ops.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(ops)


def eval_transform(img_size: int, *, crop_pct: float = 0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Resize the short side to img_size / crop_pct (bicubic), center-crop img_size, normalise."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.Resize(int(math.floor(img_size / crop_pct)), interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(img_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def small_train_transform(img_size: int, mean, std, padding: int = 2, hflip: float = 0.5, random_erasing: float = 0.0):
    """Light augmentation for small native-resolution sets (Fashion-MNIST): pad-and-crop
    shifts, horizontal flip, optional erasing."""
    from torchvision.transforms import v2

    ops: list = [v2.ToImage(), v2.RandomCrop(img_size, padding=padding, padding_mode="edge")]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if random_erasing > 0:
        ops.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(ops)


def small_eval_transform(mean, std):
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def mixup_cutmix(num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 0.2, switch_prob: float = 0.5):
    """Batch transform ``(images, labels) -> (images, soft labels)``: MixUp or CutMix, chosen
    per batch with ``switch_prob`` for CutMix (the official recipe's 0.8 / 0.2 / 0.5). None
    when both alphas are 0."""
    from torchvision.transforms import v2

    choices, probs = [], []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        probs.append(1 - switch_prob if cutmix_alpha > 0 else 1.0)
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        probs.append(switch_prob if mixup_alpha > 0 else 1.0)
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices, p=probs)
