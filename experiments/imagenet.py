#!/usr/bin/env python
"""Train / evaluate VMINet image classifiers with Lightning: the paper's ImageNet recipe,
and a built-in offline default (Fashion-MNIST from Debian's dataset-fashion-mnist).

Examples::

    python experiments/imagenet.py                                  # Fashion-MNIST, ~11 min on 2 CPU cores
    python experiments/imagenet.py --data /data/imagenet --model vminet_ti \\
        --devices 8 --strategy ddp --precision bf16-mixed          # the paper's recipe
    python experiments/imagenet.py --data imagefolder:/data/pets    # HF datasets imagefolder
    python experiments/imagenet.py --data frgfm/imagenette          # a HF hub dataset (needs internet)
    python experiments/imagenet.py --resume last                    # continue OUT_DIR/checkpoints/last.ckpt
    python experiments/imagenet.py --eval-only --checkpoint runs/imagenet/checkpoints/last.ckpt

Every step's randomness (augmentation, MixUp/CutMix, DropPath, shuffling) is a function of
(seed, epoch, index): a resumed run reproduces an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics

from harness import (
    SeedEachBatch,
    StopAfterEpochs,
    add_trainer_args,
    argument_errors,
    build_trainer,
    cosine_with_warmup,
    plot_metrics,
    resolve_resume,
    run_script,
)
from vmiseq.checkpoints import load_module_from_checkpoint
from vmiseq.data import images as di
from vmiseq.models import create_model, list_models

# The paper's recipe (docs/design.md §2) for real photos, and a small-image preset for the
# built-in Fashion-MNIST default (28 px native, light augmentation, no MixUp: on 10 easy
# classes and a ~10-minute CPU budget the heavy regularisers cost more accuracy than they buy).
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": dict(
        model="vminet_ti", img_size=224, epochs=300, batch_size=128, lr_base=1e-3, lr_base_batch=768,
        weight_decay=0.025, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, label_smoothing=0.1,
        mixup=0.8, cutmix=0.2, cutmix_switch_prob=0.5, randaugment_m=1, random_erasing=0.25,
        drop_path=0.0, crop_pct=0.875,
    ),
    "fashion-mnist": dict(
        model="vminet_mnist", img_size=28, epochs=6, batch_size=128, lr_base=2e-3, lr_base_batch=128,
        weight_decay=0.05, warmup_epochs=0.3, warmup_lr=1e-5, min_lr=1e-5, label_smoothing=0.1,
        mixup=0.0, cutmix=0.0, cutmix_switch_prob=0.5, randaugment_m=None, random_erasing=0.0,
        drop_path=0.0, crop_pct=1.0,
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None,
                   help="an ImageNet-style folder (DIR/train and DIR/val with one folder per class), "
                        "'imagefolder:DIR' (HF datasets imagefolder) or a HF dataset name; "
                        "default: Fashion-MNIST from /usr/share/datasets/fashion-mnist")
    d.add_argument("--fashion-mnist-dir", default=di.FASHION_MNIST_DIR, help="where the Debian package put Fashion-MNIST")
    d.add_argument("--train-subset", type=int, default=None, help="use only the first N training images (quick runs)")
    d.add_argument("--val-subset", type=int, default=None, help="use only the first N validation images")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None, help=f"one of {list_models()} (default: per dataset)")
    m.add_argument("--img-size", type=int, default=None, help="training/eval resolution (default: per dataset)")
    m.add_argument("--rank-mask", action=argparse.BooleanOptionalAction, default=None, help="v2 (on) / v1 (off); default: the model's")
    m.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate")
    m.add_argument("--model-kwargs", default="{}", help='extra config fields as JSON, e.g. \'{"depths": [1, 1, 2, 1]}\'')
    o = p.add_argument_group("optimisation (defaults: the paper's recipe for folders, a small one for Fashion-MNIST)")
    o.add_argument("--epochs", type=float, default=None)
    o.add_argument("--batch-size", type=int, default=None, help="per device")
    o.add_argument("--lr", type=float, default=None, help="absolute peak lr (overrides the scaling rule)")
    o.add_argument("--lr-base", type=float, default=None, help="lr at --lr-base-batch; scaled linearly by the global batch")
    o.add_argument("--lr-base-batch", type=int, default=None)
    o.add_argument("--min-lr", type=float, default=None)
    o.add_argument("--warmup-epochs", type=float, default=None)
    o.add_argument("--warmup-lr", type=float, default=None)
    o.add_argument("--weight-decay", type=float, default=None)
    o.add_argument("--label-smoothing", type=float, default=None)
    o.add_argument("--mixup", type=float, default=None, help="MixUp alpha (0 disables)")
    o.add_argument("--cutmix", type=float, default=None, help="CutMix alpha (0 disables)")
    o.add_argument("--cutmix-switch-prob", type=float, default=None, help="probability of CutMix when both are on")
    o.add_argument("--randaugment-m", type=int, default=None, help="RandAugment magnitude (-1 disables)")
    o.add_argument("--random-erasing", type=float, default=None)
    o.add_argument("--crop-pct", type=float, default=None, help="eval center-crop fraction")
    o.add_argument("--stop-after-epochs", type=int, default=None,
                   help="stop after N epochs but keep the schedule of --epochs (split a run into time slots; "
                        "continue with --resume last)")
    o.add_argument("--limit-train-batches", type=float, default=None, help="Lightning limit (tests, smoke runs)")
    o.add_argument("--limit-val-batches", type=float, default=None)
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-only", action="store_true", help="only evaluate --checkpoint on the validation set")
    e.add_argument("--checkpoint", default=None, help="a Lightning .ckpt or a save_pretrained directory (with --eval-only)")
    add_trainer_args(p, out_dir="runs/imagenet")
    args = p.parse_args(argv)
    preset = PRESETS["fashion-mnist" if args.data is None else "imagenet"]
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.randaugment_m is not None and args.randaugment_m < 0:
        args.randaugment_m = None
    try:
        args.model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as exc:
        p.error(f"--model-kwargs: expected a JSON object, got {args.model_kwargs!r}: {exc}")
    if not isinstance(args.model_kwargs, dict):
        p.error(f"--model-kwargs: expected a JSON object, got {args.model_kwargs!r}")
    if args.eval_only and not args.checkpoint:
        p.error("--eval-only needs --checkpoint PATH")
    if args.epochs <= 0 or args.batch_size <= 0:
        p.error(f"--epochs and --batch-size must be positive, got {args.epochs} and {args.batch_size}")
    return args


# ---------------------------------------------------------------------- data
def build_datasets(args) -> tuple[Any, Any, list[str], int]:
    """(train set, val set, class names, input channels) for ``args.data``."""
    if args.data is None:
        with argument_errors("--fashion-mnist-dir"):
            fm = di.load_fashion_mnist(args.fashion_mnist_dir)
        mean, std = di.FASHION_MNIST_MEAN, di.FASHION_MNIST_STD
        tr = di.small_train_transform(args.img_size, mean, std, random_erasing=args.random_erasing)
        ev = di.small_eval_transform(mean, std)
        if args.img_size != 28:  # e.g. run an ImageNet-shaped model on Fashion-MNIST
            from torchvision.transforms import v2
            tr = v2.Compose([v2.Resize(args.img_size, antialias=True), tr])
            ev = v2.Compose([v2.Resize(args.img_size, antialias=True), ev])
        train = di.TensorImageDataset(*fm["train"], tr, di.FASHION_MNIST_CLASSES)
        val = di.TensorImageDataset(*fm["test"], ev, di.FASHION_MNIST_CLASSES)
        return _subset(train, args.train_subset), _subset(val, args.val_subset), list(di.FASHION_MNIST_CLASSES), 1
    rand_m = args.randaugment_m
    tr = di.train_transform(args.img_size, randaugment_magnitude=rand_m, random_erasing=args.random_erasing)
    ev = di.eval_transform(args.img_size, crop_pct=args.crop_pct)
    spec = str(args.data)
    if os.path.isdir(spec) or os.path.sep in spec and not spec.startswith("imagefolder:"):
        root = Path(spec)
        if not root.is_dir():
            raise FileNotFoundError(f"--data: folder {spec!r} does not exist")
        val_dir = next((root / n for n in ("val", "validation", "test") if (root / n).is_dir()), None)
        if not (root / "train").is_dir() or val_dir is None:
            found = sorted(p.name for p in root.iterdir())
            shown = ", ".join(found[:8]) + (f" ... ({len(found)} entries)" if len(found) > 8 else "")
            raise ValueError(
                f"--data: expected an ImageNet-style folder with {spec}/train/<class>/... and "
                f"{spec}/val/<class>/..., found: {shown or 'nothing'}"
            )
        train = di.ImageFolderSafe(root / "train", tr)
        val = di.ImageFolderSafe(val_dir, ev, classes=train.classes)
    else:
        train, val = _hf_splits(spec, tr, ev)
    return _subset(train, args.train_subset), _subset(val, args.val_subset), list(train.classes), 3


def _hf_splits(spec: str, tr, ev):
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("--data: loading a HF dataset needs the 'datasets' package: pip install datasets") from exc
    if spec.startswith("imagefolder:"):
        path = spec.split(":", 1)[1]
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--data: imagefolder path {path!r} does not exist")
        load = lambda: datasets.load_dataset("imagefolder", data_dir=path)  # noqa: E731
    else:
        load = lambda: datasets.load_dataset(spec)  # noqa: E731
    try:
        dsd = load()
    except Exception as exc:  # noqa: BLE001 - offline, missing, private: all reported the same way
        raise ValueError(
            f"--data: could not load the HF dataset {spec!r} ({type(exc).__name__}: {exc}). Offline machines need a "
            "local folder (--data DIR or --data imagefolder:DIR) or a dataset already in the HF cache."
        ) from exc
    train_name = "train" if "train" in dsd else None
    val_name = next((n for n in ("validation", "val", "test") if n in dsd), None)
    if train_name is None or val_name is None:
        raise ValueError(f"--data: expected 'train' and 'validation'/'test' splits in {spec!r}, got {list(dsd)}")
    return di.HFImageDataset(dsd[train_name], tr), di.HFImageDataset(dsd[val_name], ev)


def _subset(ds, n: Optional[int]):
    if n is None or n >= len(ds):
        return ds
    from torch.utils.data import Subset

    sub = Subset(ds, range(n))
    sub.classes = ds.classes  # type: ignore[attr-defined]
    return sub


class _KeyedSubset(torch.utils.data.Dataset):
    """Subset that forwards (index, seed) keys from SeededShardSampler."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        if isinstance(self.ds, torch.utils.data.Subset):
            if isinstance(key, tuple):
                return self.ds.dataset[(self.ds.indices[key[0]], key[1])]
            return self.ds.dataset[self.ds.indices[key]]
        return self.ds[key]


def make_loader(ds, args, train: bool):
    sampler = di.SeededShardSampler(len(ds), seed=args.seed, shuffle=train, drop_last=train, seed_samples=train)
    return torch.utils.data.DataLoader(
        _KeyedSubset(ds), batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0, drop_last=train, pin_memory=False,
    )


class ImageDataModule(L.LightningDataModule):
    """Training and validation images, each rank its own shard; shuffling and augmentation
    are functions of (seed, epoch, index) (``SeededShardSampler``), so a resume replays them."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.train_set, self.val_set, self.classes, self.in_chans = build_datasets(args)

    def train_dataloader(self):
        return make_loader(self.train_set, self.args, train=True)

    def val_dataloader(self):
        return make_loader(self.val_set, self.args, train=False)


# ---------------------------------------------------------------------- Lightning module
class ImageClassifier(L.LightningModule):
    """VMINet + the recipe: soft-target CE with label smoothing, MixUp/CutMix, AdamW with
    no decay on 1-D params, cosine schedule with warm-up, top-1/top-5."""

    def __init__(self, model_name: str, model_kwargs: dict, num_classes: int, lr: Optional[float], lr_base: float,
                 lr_base_batch: int, weight_decay: float, warmup_epochs: float, warmup_lr: float, min_lr: float,
                 label_smoothing: float, mixup: float, cutmix: float, cutmix_switch_prob: float, seed: int,
                 batch_size: int, model: Optional[torch.nn.Module] = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else create_model(model_name, **model_kwargs)
        self.mix = di.mixup_cutmix(num_classes, mixup, cutmix, cutmix_switch_prob)
        k = min(5, num_classes)
        self.acc1 = torchmetrics.classification.MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.acc5 = torchmetrics.classification.MulticlassAccuracy(num_classes, top_k=k, average="micro")

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mix is not None:
            x, y = self.mix(x, y)
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x).float()
        loss = F.cross_entropy(logits, y)
        self.acc1(logits, y)
        self.acc5(logits, y)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=y.shape[0])
        self.log("val/acc1", self.acc1, prog_bar=True, batch_size=y.shape[0])
        self.log("val/acc5", self.acc5, batch_size=y.shape[0])

    def peak_lr(self) -> float:
        if self.hparams.lr is not None:
            return self.hparams.lr
        gb = self.trainer.world_size * self.trainer.accumulate_grad_batches * self.hparams.batch_size
        return self.hparams.lr_base * gb / self.hparams.lr_base_batch

    def configure_optimizers(self):
        lr = self.peak_lr()
        opt = torch.optim.AdamW(self.model.param_groups(self.hparams.weight_decay), lr=lr)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = int(round(self.hparams.warmup_epochs * total / epochs))
        sched = cosine_with_warmup(opt, warmup, total, self.hparams.min_lr / lr, self.hparams.warmup_lr / lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    L.seed_everything(args.seed, workers=True, verbose=False)
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    with argument_errors("--data"):
        data = ImageDataModule(args)
    classes = data.classes
    out = Path(args.out_dir)
    trainer_kwargs: dict[str, Any] = dict(use_distributed_sampler=False)
    if args.limit_train_batches is not None:
        trainer_kwargs["limit_train_batches"] = args.limit_train_batches if args.limit_train_batches < 1 else int(args.limit_train_batches)
    if args.limit_val_batches is not None:
        trainer_kwargs["limit_val_batches"] = args.limit_val_batches if args.limit_val_batches < 1 else int(args.limit_val_batches)
    epochs = args.epochs
    max_epochs = int(-(-epochs // 1))
    max_steps = -1
    if epochs != int(epochs):  # fractional epochs: stop at a step count
        steps_per_epoch = len(data.train_set) // (args.batch_size * max(1, args.accumulate_grad_batches))
        max_steps = max(1, int(epochs * steps_per_epoch))
    # Randomness of each step (MixUp/CutMix, DropPath) = f(seed, epoch, batch, rank): resumable.
    callbacks = [SeedEachBatch(args.seed)]
    if args.stop_after_epochs:
        callbacks.append(StopAfterEpochs(args.stop_after_epochs))
    with argument_errors():
        trainer = build_trainer(args, monitor="val/acc1", mode="max", max_epochs=max_epochs, max_steps=max_steps,
                                callbacks=callbacks, **trainer_kwargs)

    if args.eval_only:
        with argument_errors("--checkpoint"):
            module = load_for_eval(args.checkpoint, len(classes))
        metrics = trainer.validate(module, datamodule=data)[0]
        if trainer.is_global_zero:
            print(json.dumps({"checkpoint": args.checkpoint, **metrics}, indent=2))
        return metrics

    model_kwargs = dict(args.model_kwargs, num_classes=len(classes), in_chans=data.in_chans, img_size=args.img_size)
    if args.rank_mask is not None:
        model_kwargs["rank_mask"] = args.rank_mask
    if args.drop_path:
        model_kwargs["drop_path_rate"] = args.drop_path
    metrics_csv = out / "logs" / "metrics.csv"  # continued, not restarted, by a resumed run (build_trainer)
    with argument_errors():
        module = ImageClassifier(
            args.model, model_kwargs, len(classes), args.lr, args.lr_base, args.lr_base_batch, args.weight_decay,
            args.warmup_epochs, args.warmup_lr, args.min_lr, args.label_smoothing, args.mixup, args.cutmix,
            args.cutmix_switch_prob, args.seed, args.batch_size,
        )
        resume = resolve_resume(args.resume, args.out_dir)
    t0 = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    train_time = time.time() - t0
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    result = {
        "data": args.data or "fashion-mnist", "model": args.model, "params": sum(p.numel() for p in module.model.parameters()),
        "epochs": epochs, "global_batch": trainer.world_size * args.accumulate_grad_batches * args.batch_size,
        "peak_lr": module.peak_lr(), "train_time_s": round(train_time, 1), "final": final,
    }
    if trainer.is_global_zero:
        module.model.save_pretrained(out / "model")
        if metrics_csv.is_file():
            plot_metrics(metrics_csv, out / "curves.png", {
                "loss": ["train/loss", "val/loss"], "accuracy": ["val/acc1", "val/acc5"],
            })
        (out / "results.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    return result


def load_for_eval(path: str, num_classes: int) -> ImageClassifier:
    """A module from a Lightning checkpoint or a save_pretrained directory."""
    p = Path(path)
    if p.is_dir():
        from vmiseq.models.mlla import MLLA
        from vmiseq.models.vminet import VMINet

        saved_class = json.loads((p / "config.json").read_text()).get("model_class") if (p / "config.json").is_file() else None
        model = (MLLA if saved_class == "MLLA" else VMINet).from_pretrained(p)
        if model.config.num_classes != num_classes:
            raise ValueError(f"--checkpoint: the model has {model.config.num_classes} classes, the data {num_classes}")
        return ImageClassifier("pretrained", {}, num_classes, None, 1e-3, 1, 0.0, 0, 0, 0, 0.0, 0.0, 0.0, 0.5, 0, 1, model=model)
    return load_module_from_checkpoint(ImageClassifier, p, what="--checkpoint")


if __name__ == "__main__":
    run_script(main)
