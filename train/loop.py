"""One training loop, no framework, for every recipe (train/recipes.py): a step computes the
recipe's weighted losses -- cross-entropy, REINFORCE with the reward and baseline of
train/reward.py, attribute BCE -- on frozen (cached) or trained CNN features. The paper's stages
are three recipes: (1) cross-entropy with the CNN frozen, (2) REINFORCE+, (3) everything trained
with 0.95 * RL + 0.05 * attribute BCE. Each recipe writes RUN/<dir>/ (stage1, stage2, stage3, ...):
config.json, metrics.jsonl, TensorBoard events (tb/), best.pt (by val CIDEr), last.pt (for --resume)
and curves.png.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from evalkit.atomic import write_atomic, write_bytes_atomic
from evalkit.cider import load_df
from evalkit.coco import Scorer
from evalkit.errors import UserError
from evalkit.grounding import slot_accuracy
from model.base import VideoCaptioner
from model.checkpoint import load_checkpoint, save_checkpoint
from model.registry import create_model, make_config
from pipeline.vocab import MAX_LEN, decode
from train import run_lock
from train.config import TrainConfig
from train.data import DataInfo, ShardDataset, caption_batch, pick_captions, torch_loader
from train.features import FeatureSet, cached_features, feature_batches
from train.losses import attr_loss, rl_loss, xe_loss
from train.recipes import RECIPES, STAGES
from train.report import MetricsLog, plot_curves
from train.reward import make_reward, sample_rewards


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device=cuda, but torch.cuda.is_available() is False (no GPU or a CPU-only torch)")
        return torch.device("cuda")
    if cfg.amp:
        raise UserError("amp=true needs device=cuda (bf16 autocast is only used on the GPU)")
    return torch.device("cpu")


def make_batches(cfg: TrainConfig, info: DataInfo, split: str, image_size: int, shuffle: bool, epoch: int = 0,
                 batch_size: int | None = None):
    """Frame batches from the configured loader (torch DataLoader or DALI)."""
    bs = batch_size or cfg.batch_size
    if cfg.loader == "dali":
        from train.dali_loader import DaliLoader

        return DaliLoader(info, split, image_size, bs, shuffle, seed=cfg.seed + epoch, device=cfg.device)
    ds = ShardDataset(info, split, image_size, shuffle, cfg.seed, cfg.shuffle_buffer, cfg.max_clips)
    ds.set_epoch(epoch)
    return torch_loader(ds, bs, cfg.num_workers)


def build_model(cfg: TrainConfig, info: DataInfo) -> tuple[VideoCaptioner, str | None]:
    """A fresh model of architecture model.arch (default s2vt), built through the registry, or the one
    to start from (--init, else the recipe's predecessor's best.pt; its checkpoint names its architecture)."""
    init = cfg.init
    before = RECIPES[cfg.recipe].init
    if init is None and before is not None:
        init = str(Path(cfg.run) / RECIPES[before].dir / "best.pt")
        if not Path(init).exists():
            raise UserError(f"{init}: {recipe_label(cfg.recipe)} starts from {recipe_label(before)}'s best "
                            f"checkpoint; run `train {recipe_flag(before)}` first or pass --init")
    if init is not None:
        model, ckpt = load_checkpoint(init)
        if ckpt["vocab"] != info.itos:
            raise UserError(f"{init}: its vocabulary differs from {info.root}/vocab.json")
        return model, init
    overrides = {"backbone_weights": cfg.backbone_weights, "n_attributes": len(info.attributes),
                 "n_frames": info.n_frames, **cfg.model_overrides}
    try:
        return create_model(make_config(cfg.preset, len(info.itos), **overrides)), None
    except (ValueError, FileNotFoundError) as e:  # the model's own checks of the settings it was given
        raise UserError(str(e)) from None


def recipe_label(name: str) -> str:
    stage = next((n for n, r in STAGES.items() if r == name), None)
    return f"stage {stage}" if stage else f"recipe {name}"


def recipe_flag(name: str) -> str:
    stage = next((n for n, r in STAGES.items() if r == name), None)
    return f"--stage {stage}" if stage else f"--recipe {name}"


def split_metadata(info: DataInfo, split: str, max_clips: int | None) -> tuple[dict[str, list[str]], dict[str, list]]:
    """The split's reference captions and (where the shards carry them) ground-truth objects."""
    metas = info.metadata(split)
    if max_clips is not None:
        metas = metas[:max_clips]
    return {m["clip_id"]: m["captions"] for m in metas}, {m["clip_id"]: m["objects"] for m in metas if m.get("objects")}


class Trainer:
    def __init__(self, cfg: TrainConfig, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.device = resolve_device(cfg)
        self.info = DataInfo.load(cfg.data, cfg.skip_bad_shards)
        self.dir = Path(cfg.run) / cfg.recipe_dir
        run_lock.acquire(self.dir)  # before anything in the run folder is read or written
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.start_epoch, self.best, self.history = 0, float("-inf"), []
        if cfg.resume:
            last = self.dir / "last.pt"
            if not last.exists():
                raise UserError(f"{last}: nothing to resume")
            self.model, ckpt = load_checkpoint(last)
            self.init_from = ckpt["extra"].get("init_from")
        else:
            self.model, self.init_from = build_model(cfg, self.info)
        self.model.to(self.device)
        self.model.freeze_backbone(not cfg.train_cnn, bn_stats=cfg.bn_stats)
        self.image_size = self.model.cfg.image_size
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.resume:
            extra = ckpt["extra"]
            try:  # a checkpoint that passed load_checkpoint but holds no usable training state
                self.opt.load_state_dict(extra["optimizer"])
                torch.set_rng_state(extra["rng"])
                self.start_epoch, self.best, self.history = int(extra["epoch"]) + 1, float(extra["best"]), list(extra["history"])
            except (KeyError, ValueError, TypeError, RuntimeError) as e:
                raise UserError(f"{self.dir / 'last.pt'}: not a checkpoint to resume from ({type(e).__name__}: "
                                f"{str(e)[:100]})") from None
            if self.device.type == "cuda" and extra.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(extra["cuda_rng"])
        self.train_refs, _ = split_metadata(self.info, "train", cfg.max_clips)
        self.val_refs, self.val_objects = split_metadata(self.info, "val", cfg.max_clips)
        self.reward = None
        if cfg.rl_weight:
            df, n_docs = load_df(self.info.root / "cider_df.parquet")
            self.reward = make_reward(cfg.reward, itos=self.info.itos, references=self.train_refs, df=df,
                                      n_docs=n_docs, max_len=MAX_LEN)
        self.use_cache = cfg.feature_cache and not cfg.train_cnn
        self.cache: dict[str, FeatureSet] = {}
        cfg.save(self.dir / "config.json")
        self.log = MetricsLog(self.dir, resume_epoch=self.start_epoch - 1 if cfg.resume else None)
        if self.model.cfg.feature_norm and self.init_from is None and not cfg.resume:
            feats = self.features("train").feats
            self.model.set_feature_stats(feats.to(self.device))

    # ---- data ---------------------------------------------------------------------------------
    def features(self, split: str) -> FeatureSet:
        if split not in self.cache:
            t0 = time.perf_counter()
            self.cache[split] = cached_features(
                self.model, self.info, split, self.image_size, Path(self.cfg.run) / "features",
                lambda: make_batches(self.cfg, self.info, split, self.image_size, False, batch_size=32),
                self.device, self.cfg.max_clips, self.progress)
            self.log.write({"event": "features", "split": split, "clips": len(self.cache[split].clip_ids),
                            "seconds": round(time.perf_counter() - t0, 3)})
        return self.cache[split]

    def epoch_batches(self, epoch: int):
        if self.use_cache:
            fs = self.features("train")
            g = torch.Generator().manual_seed(self.cfg.seed * 1000003 + epoch)
            return feature_batches(fs, self.cfg.batch_size, torch.randperm(len(fs.clip_ids), generator=g))
        return make_batches(self.cfg, self.info, "train", self.image_size, True, epoch)

    def n_batches(self) -> int:
        n = len(self.train_refs)
        return -(-n // self.cfg.batch_size)

    def batch_features(self, batch: dict) -> torch.Tensor:
        if "feats" in batch:
            return batch["feats"].to(self.device)
        return self.model.frame_features(batch["frames"].to(self.device))

    # ---- one step -----------------------------------------------------------------------------
    def step(self, batch: dict, epoch: int) -> dict:
        """One optimiser step on the recipe's loss: xe * L_XE + rl * L_RL + attr * L_attr."""
        cfg, model = self.cfg, self.model
        model.train()
        terms: list[torch.Tensor] = []
        stats: dict[str, float] = {}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp):
            feats = self.batch_features(batch)
            if cfg.xe_weight:
                n = cfg.captions_per_clip
                caps = [c for cs, i in zip(batch["captions"], batch["clip_id"], strict=True)
                        for c in pick_captions(cs, n, cfg.seed, epoch, i)]
                targets = caption_batch(caps, self.info.stoi, model.cfg.max_len).to(self.device)
                lx = xe_loss(model(feats.repeat_interleave(n, 0), targets).float(), targets)
                terms.append(cfg.xe_weight * lx)
                stats["xe_loss"] = lx.item()
            if cfg.rl_weight:
                seqs, logps, rewards, base = sample_rewards(model, feats, batch["clip_id"], cfg.samples,
                                                            cfg.temperature, self.reward, cfg.baseline)
                r = torch.from_numpy(rewards).float().to(self.device)
                b = torch.from_numpy(base).float().to(self.device)
                lr_ = rl_loss(logps.float(), seqs, r, b)
                terms.append(cfg.rl_weight * lr_)
                stats.update(rl_loss=lr_.item(), reward=r.mean().item(), baseline=b.mean().item())
            if cfg.attr_weight:
                la = attr_loss(model.attribute_logits(feats).float(), batch["attrs"].to(self.device))
                terms.append(cfg.attr_weight * la)
                stats["attr_loss"] = la.item()
        loss = torch.stack(terms).sum()
        stats["loss"] = loss.item()
        if not math.isfinite(stats["loss"]):  # never train on, or log, a NaN
            terms_text = ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
            raise UserError(f"epoch {epoch + 1}: the loss is not finite ({terms_text}); training diverged: "
                            "lower lr, or check the data")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        self.opt.step()
        return stats

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, split: str, beam: int = 1) -> dict[str, str]:
        self.model.eval()
        if self.use_cache:
            batches = feature_batches(self.features(split), 64)
        else:
            batches = make_batches(self.cfg, self.info, split, self.image_size, False, batch_size=16)
        preds = {}
        for batch in batches:
            feats = self.batch_features(batch)
            seqs = self.model.greedy(feats) if beam <= 1 else self.model.beam(feats, beam)
            for cid, s in zip(batch["clip_id"], seqs.tolist(), strict=True):
                preds[cid] = decode(s, self.info.itos)
            if self.cfg.max_clips is not None and len(preds) >= self.cfg.max_clips:
                break
        return preds

    def evaluate(self, scorer: Scorer) -> dict:
        preds = self.predict("val", self.cfg.eval_beam)
        refs = {k: self.val_refs[k] for k in preds}
        out = {f"val_{k}": v for k, v in scorer.score(preds, refs).items()}
        if self.val_objects:
            grounded = slot_accuracy(preds, self.val_objects)
            out.update({f"val_{k}": grounded[k] for k in ("action_acc", "colour_acc", "shape_acc")})
        return out

    # ---- the loop -----------------------------------------------------------------------------
    def save(self, name: str, epoch: int) -> None:
        extra = {"recipe": self.cfg.recipe, "epoch": epoch, "best": self.best, "history": self.history,
                 "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(), "init_from": self.init_from,
                 "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}
        write_atomic(self.dir / name,  # unique temp name, removed on failure, then renamed
                     lambda f: save_checkpoint(f, self.model, self.info.itos, self.info.attributes, extra))

    def fit(self) -> dict:
        cfg = self.cfg
        counts = self.model.parameter_counts()
        label = recipe_label(cfg.recipe)
        self.log.write({"event": "start", "recipe": cfg.recipe, "init_from": self.init_from, "params": counts,
                        "backbone_weights": self.model.backbone_info.weights, "start_epoch": self.start_epoch})
        if self.progress:
            print(f"{label}: {counts['total'] / 1e6:.2f} M parameters ({counts['backbone'] / 1e6:.2f} M "
                  f"backbone, {'trained' if cfg.train_cnn else 'frozen'}); starting from "
                  f"{self.init_from or self.model.backbone_info.weights}")
        step = sum(h.get("steps", 0) for h in self.history)
        with Scorer(meteor=False) as scorer:
            for epoch in range(self.start_epoch, cfg.epochs):
                t0, clips, agg = time.perf_counter(), 0, {}
                bar = tqdm(self.epoch_batches(epoch), desc=f"{label} epoch {epoch + 1}/{cfg.epochs}",
                           total=self.n_batches(), unit="batch", disable=not self.progress, leave=False)
                n_steps = 0
                for batch in bar:
                    stats = self.step(batch, epoch)
                    step += 1
                    n_steps += 1
                    clips += len(batch["clip_id"])
                    for k, v in stats.items():
                        agg[k] = agg.get(k, 0.0) + v
                    self.log.write({"event": "step", "epoch": epoch, "step": step, **stats})
                    bar.set_postfix(loss=f"{stats['loss']:.3f}")
                seconds = time.perf_counter() - t0
                record = {"epoch": epoch, "steps": n_steps, "train_seconds": round(seconds, 2),
                          "clips_per_s": round(clips / max(seconds, 1e-9), 2),
                          **{f"train_{k}": v / max(n_steps, 1) for k, v in agg.items()}}
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    record.update(self.evaluate(scorer))
                self.history.append(record)
                self.log.write({"event": "epoch", **record})
                score = record.get("val_CIDEr")
                if score is not None and score > self.best:
                    self.best = score
                    self.save("best.pt", epoch)
                self.save("last.pt", epoch)
                if self.progress:
                    val = f", val CIDEr {100 * score:.2f}" if score is not None else ""
                    if record.get("val_action_acc") is not None:
                        val += (f", action {100 * record['val_action_acc']:.0f}% colour "
                                f"{100 * record['val_colour_acc']:.0f}% shape {100 * record['val_shape_acc']:.0f}%")
                    print(f"{label} epoch {epoch + 1}/{cfg.epochs}: loss {record.get('train_loss', 0):.4f}, "
                          f"{record['clips_per_s']:.1f} clips/s{val}")
        if not (self.dir / "best.pt").exists() and (self.dir / "last.pt").exists():
            write_bytes_atomic(self.dir / "best.pt", (self.dir / "last.pt").read_bytes())
        plot_curves(self.history, self.dir / "curves.png", label)
        self.log.close()
        run_lock.release(self.dir)
        return {"best_val_CIDEr": self.best, "history": self.history, "dir": str(self.dir)}


def run_stage(cfg: TrainConfig, progress: bool = True) -> dict:
    return Trainer(cfg, progress).fit()

