"""One training loop, no framework, for every recipe (train/recipes.py): a step computes the
recipe's weighted losses (train/step.py) on frozen (cached) or trained CNN features. The paper's
stages are three recipes: (1) cross-entropy with the CNN frozen, (2) REINFORCE+, (3) everything
trained with 0.95 * RL + 0.05 * attribute BCE. Each recipe writes RUN/<dir>/ (stage1, stage2,
stage3, ...): config.json, metrics.jsonl, TensorBoard events (tb/), best.pt (by val CIDEr),
last.pt (for --resume) and curves.png.

One process, or one rank of a ``torchrun`` job (train/distributed.py): every rank trains on its
slice of each epoch (train/data.py) through DistributedDataParallel; rank 0 alone writes the run
folder and evaluates, and the others never touch it (what they need from it -- a checkpoint to
start from, the feature cache -- rank 0 reads and broadcasts).

``last.pt`` is written every ``save_every`` steps, at each epoch end, and when the job is told to
stop (SIGTERM/SIGINT, train/preempt.py) or a rank cannot read its data: it holds the position
(epoch, batches done, steps done) and every rank's RNG state, and ``--resume`` continues from
there -- the same batches in the same order, skipped without decoding -- to the same weights.
Under torchrun every rank agrees before each step on whether to stop, so all stop at one step.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vidcap.atomic import write_atomic, write_bytes_atomic
from vidcap.errors import UserError
from vidcap.evalkit.coco import Scorer
from vidcap.evalkit.grounding import slot_accuracy
from vidcap.model import decoding
from vidcap.model.base import VideoCaptioner
from vidcap.model.checkpoint import load_checkpoint, save_checkpoint
from vidcap.model.registry import create_model, make_config
from vidcap.shards.layout import DataInfo
from vidcap.tokens import MAX_LEN, decode
from vidcap.train import distributed, rng_state, run_lock
from vidcap.train.config import TrainConfig
from vidcap.train.data import SplitStream, rank_range, torch_loader
from vidcap.train.features import FeatureSet, cached_features, feature_batches
from vidcap.train.preempt import Preempted, StopFlag
from vidcap.train.recipes import RECIPES, STAGES
from vidcap.train.report import MetricsLog, NullLog, plot_curves
from vidcap.train.resume import Position, read_extra, training_extra
from vidcap.train.reward import make_reward
from vidcap.train.step import RecipeLoss, reduce_stats, stat_vector


def make_batches(cfg: TrainConfig, info: DataInfo, split: str, image_size: int, shuffle: bool, epoch: int = 0,
                 batch_size: int | None = None, rank: int = 0, world: int = 1, pad: bool = False, skip: int = 0):
    """Frame batches from the configured loader (torch DataLoader or DALI)."""
    bs = batch_size or cfg.batch_size
    if cfg.loader == "dali":
        from itertools import islice

        from vidcap.train.dali_loader import DaliLoader

        if world > 1:
            raise UserError("loader=dali runs in one process; under torchrun use loader=torch")
        return islice(DaliLoader(info, split, image_size, bs, shuffle, seed=cfg.seed + epoch, device=cfg.device),
                      skip, None)
    stream = SplitStream(info, split, shuffle, cfg.seed, epoch, rank, world, pad, cfg.shuffle_buffer, cfg.max_clips)
    return torch_loader(stream, image_size, bs, cfg.num_workers, skip)


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
            raise UserError(f"{init}: its vocabulary differs from {info.build.url('vocab.json')}")
        return model, init
    overrides = {"backbone_weights": cfg.backbone_weights, "n_attributes": len(info.attributes),
                 "n_frames": info.n_frames, **cfg.model_overrides}
    try:
        return create_model(make_config(cfg.preset, len(info.itos), **overrides)), None
    except (ValueError, FileNotFoundError) as e:  # the model's own checks of the settings it was given
        raise UserError(str(e)) from None


def param_groups(model: VideoCaptioner, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters for Adam: one group at cfg.lr, or -- when the CNN trains and
    cnn_lr_scale != 1 -- the CNN in a second group at lr * cnn_lr_scale. Why: one epoch of the
    captioner's lr moves a pretrained CNN's standardised features by most of their own length,
    and the LSTM reading them has to learn its input again (README "Training")."""
    params = [p for p in model.parameters() if p.requires_grad]
    cnn = {id(p) for p in model.backbone.parameters()}
    if cfg.cnn_lr_scale == 1.0 or not any(id(p) in cnn for p in params):
        return [{"params": params}]  # one group, as checkpoints before cnn_lr_scale have
    return [{"params": [p for p in params if id(p) not in cnn]},
            {"params": [p for p in params if id(p) in cnn], "lr": cfg.lr * cfg.cnn_lr_scale}]


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
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device, cfg.amp, cfg.dist_timeout)
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        try:
            self._setup()
        except BaseException:
            self.dist.close()
            raise

    def _setup(self) -> None:
        cfg, d = self.cfg, self.dist
        self.info = DataInfo.load(cfg.data, cfg.skip_bad_shards)
        self.dir = Path(cfg.run) / cfg.recipe_dir
        d.on_main(lambda: run_lock.acquire(self.dir))  # before anything in the run folder is read or written
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.position, self.best, self.history = Position(), float("-inf"), []
        self.epoch_progress: dict | None = None
        self.saved_rng: dict | None = None
        model_config, extra, self.init_from = d.on_main(self._load_model)  # rank 0: load (resume, --init) or build
        if not d.is_main:  # the weights come from rank 0 when DDP wraps the model
            self.model = create_model({**model_config, "pretrained": False})
        self.model.to(self.device)
        self.model.freeze_backbone(not cfg.train_cnn, bn_stats=cfg.bn_stats)
        self.image_size = self.model.cfg.image_size
        self.opt = torch.optim.Adam(param_groups(self.model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.resume:
            self._restore(extra)
        for split in ("train", "val"):  # one verifying pass, on rank 0; the others get its result
            data = d.on_main(lambda s=split: self.info.split(s))
            self.info.build.set_split(split, cfg.skip_bad_shards, data)
        self.train_refs, _ = split_metadata(self.info, "train", cfg.max_clips)
        self.val_refs, self.val_objects = split_metadata(self.info, "val", cfg.max_clips)
        self.n_train = len(self.info.metadata("train")[: cfg.max_clips])
        reward = None
        if cfg.rl_weight:
            df, n_docs = self.info.build.cider_df()
            reward = make_reward(cfg.reward, itos=self.info.itos, references=self.train_refs, df=df,
                                 n_docs=n_docs, max_len=MAX_LEN)
        self.use_cache = cfg.feature_cache and not cfg.train_cnn
        self.cache: dict[str, FeatureSet] = {}
        if d.is_main:
            cfg.save(self.dir / "config.json")
        resume_at = (self.position.epoch, self.position.step) if cfg.resume else None
        self.log = MetricsLog(self.dir, resume_at=resume_at) if d.is_main else NullLog()
        if self.model.cfg.feature_norm and self.init_from is None and not cfg.resume:
            feats = self.features("train").feats
            self.model.set_feature_stats(feats.to(self.device))
        if d.rank:  # every rank its own dropout and sampling stream; rank 0 keeps the one-process stream
            torch.manual_seed(cfg.seed + 1_000_003 * d.rank)
        self.loss = RecipeLoss(self.model, cfg, self.info.stoi, reward, d.world)
        self.step_module = self.loss
        if d.enabled:
            self.step_module = DistributedDataParallel(
                self.loss, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)  # e.g. the attribute head, unused by cross-entropy recipes

    def _load_model(self) -> tuple[dict, dict, str | None]:
        """Rank 0: the model to train (self.model); for every rank its config, last.pt's training
        state (on --resume) and the checkpoint the stage started from."""
        if self.cfg.resume:
            last = self.dir / "last.pt"
            if not last.exists():
                raise UserError(f"{last}: nothing to resume")
            self.model, ckpt = load_checkpoint(last)
            return ckpt["config"], ckpt["extra"], ckpt["extra"].get("init_from")
        self.model, init_from = build_model(self.cfg, self.info)
        return self.model.config_dict(), {}, init_from

    def _restore(self, extra: dict) -> None:
        """Optimiser, position, history and this rank's RNG state from last.pt's extra (all ranks)."""
        state = read_extra(extra, self.dir / "last.pt", self.dist.rank, self.dist.world)
        saved = state.optimizer.get("param_groups") if isinstance(state.optimizer, dict) else None
        if isinstance(saved, list) and len(saved) != len(self.opt.param_groups):
            raise UserError(f"{self.dir / 'last.pt'}: saved with {len(saved)} optimiser group(s), these settings "
                            f"make {len(self.opt.param_groups)} (cnn_lr_scale={self.cfg.cnn_lr_scale}); resume with "
                            f"the cnn_lr_scale it was trained with ({'1' if len(saved) == 1 else 'not 1'})")
        try:
            self.opt.load_state_dict(state.optimizer)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise UserError(f"{self.dir / 'last.pt'}: not a checkpoint to resume from ({type(e).__name__}: "
                            f"{str(e)[:100]})") from None
        self.position, self.best, self.history = state.position, state.best, state.history
        self.saved_rng, self.epoch_progress = state.rng, state.epoch_progress

    def close(self) -> None:
        self.dist.close()

    # ---- data ---------------------------------------------------------------------------------
    def features(self, split: str) -> FeatureSet:
        """A split's cached CNN features (collective under torchrun: every rank calls it together)."""
        if split not in self.cache:
            t0 = time.perf_counter()
            self.cache[split] = cached_features(
                self.model, self.info, split, self.image_size, Path(self.cfg.run) / "features",
                lambda rank, world: make_batches(self.cfg, self.info, split, self.image_size, False, batch_size=32,
                                                 rank=rank, world=world),
                self.dist, self.cfg.max_clips, self.progress)
            self.log.write({"event": "features", "split": split, "clips": len(self.cache[split].clip_ids),
                            "seconds": round(time.perf_counter() - t0, 3)})
        return self.cache[split]

    def epoch_batches(self, epoch: int, skip: int = 0):
        """This rank's batches of `epoch`, the first `skip` left out."""
        d = self.dist
        if self.use_cache:
            fs = self.features("train")
            g = torch.Generator().manual_seed(self.cfg.seed * 1000003 + epoch)
            order = torch.randperm(len(fs.clip_ids), generator=g)
            start, stop = rank_range(len(order), d.rank, d.world, pad=True)
            return feature_batches(fs, self.cfg.batch_size, order[torch.arange(start, stop) % len(order)], skip)
        return make_batches(self.cfg, self.info, "train", self.image_size, True, epoch, rank=d.rank, world=d.world,
                            pad=True, skip=skip)

    def n_batches(self) -> int:
        """Batches per epoch on every rank: ceil(ceil(N / world) / batch size)."""
        per_rank = -(-self.n_train // self.dist.world)
        return -(-per_rank // self.cfg.batch_size)

    def batch_features(self, batch: dict) -> torch.Tensor:
        return self.loss.features(batch)

    # ---- one step -----------------------------------------------------------------------------
    def step(self, batch: dict, epoch: int) -> dict:
        """One optimiser step on the recipe's loss: xe * L_XE + rl * L_RL + attr * L_attr."""
        cfg, d = self.cfg, self.dist
        self.model.train()
        loss, stats = self.step_module(batch, epoch)
        if d.world > 1:
            stats = reduce_stats(stats, cfg, d.sum(stat_vector(stats)), d.world)
        if not math.isfinite(stats["loss"]):  # never train on, or log, a NaN (every rank sees the same)
            terms_text = ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
            raise UserError(f"epoch {epoch + 1}: the loss is not finite ({terms_text}); training diverged: "
                            "lower lr, or check the data")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients averaged over ranks
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.grad_clip)
        self.opt.step()
        return stats

    # ---- evaluation (rank 0) ------------------------------------------------------------------
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
            seqs = decoding.decode(self.model, feats, beam)
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

    # ---- checkpoints --------------------------------------------------------------------------
    def save(self, name: str, pos: Position, epoch_progress: dict | None = None) -> None:
        """Write RUN/<dir>/NAME on rank 0 with every rank's RNG state (collective under torchrun)."""
        rngs = self.dist.gather(rng_state.capture(self.device))
        if not self.dist.is_main:
            return
        extra = training_extra(self.cfg.recipe, pos, self.best, self.history, self.opt.state_dict(), rngs,
                               self.init_from, epoch_progress)
        write_atomic(self.dir / name,  # unique temp name, removed on failure, then renamed
                     lambda f: save_checkpoint(f, self.model, self.info.itos, self.info.attributes, extra))

    def _stop_message(self, signum: int | None, pos: Position) -> str:
        why = {15: "SIGTERM", 2: "SIGINT"}.get(signum or 0, f"signal {signum}")
        return (f"stopped by {why} in epoch {pos.epoch + 1} after {pos.batch} of {self.n_batches()} batches "
                f"(step {pos.step}); {self.dir / 'last.pt'} saved: continue with --resume")

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        try:
            with StopFlag() as stop:
                return self._fit(stop)
        except Exception as e:
            if self.dist.enabled and distributed.is_lost_peer(e):
                raise UserError(f"rank {self.dist.rank} of {self.dist.world}: lost the other ranks "
                                f"({' '.join(str(e).split())[:160]}); torchrun names the rank that failed") from None
            raise
        finally:
            self.close()

    def _fit(self, stop: StopFlag) -> dict:
        cfg, d = self.cfg, self.dist
        counts = self.model.parameter_counts()
        label = recipe_label(cfg.recipe)
        pos = self.position
        self.log.write({"event": "start", "recipe": cfg.recipe, "init_from": self.init_from, "params": counts,
                        "backbone_weights": self.model.backbone_info.weights, "start_epoch": pos.epoch,
                        "start_batch": pos.batch, "world_size": d.world})
        if self.progress:
            print(f"{label}: {counts['total'] / 1e6:.2f} M parameters ({counts['backbone'] / 1e6:.2f} M "
                  f"backbone, {'trained' if cfg.train_cnn else 'frozen'}); starting from "
                  f"{self.init_from or self.model.backbone_info.weights}"
                  + (f"; {d.world} processes" if d.world > 1 else ""))
        n = self.n_batches()
        with Scorer(meteor=False) if d.is_main else nullcontext() as scorer:
            for epoch in range(pos.epoch, cfg.epochs):
                skip = pos.batch if epoch == pos.epoch else 0
                done = (self.epoch_progress or {}) if skip else {}
                agg, clips = dict(done.get("agg", {})), done.get("clips", 0)
                t0 = time.perf_counter() - done.get("seconds", 0.0)
                batches = None
                if self.saved_rng is not None:  # right before the first step the checkpoint did not see
                    rng_state.restore(self.saved_rng, self.device)
                    self.saved_rng = None
                bar = tqdm(total=n, initial=skip, desc=f"{label} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                           disable=not self.progress, leave=False)
                for b in range(skip, n):
                    try:
                        batches = batches or iter(self.epoch_batches(epoch, skip))  # a DataLoader starts reading here
                        batch, error = next(batches), None
                    except UserError as e:  # a shard that cannot be read (a server gone, a bad shard)
                        batch, error = None, e
                    except StopIteration:
                        batch, error = None, UserError(f"epoch {epoch + 1}: the loader ended after {b} of {n} batches")
                    failed, stopping = d.sum([error is not None, stop.requested]) if d.enabled else (
                        error is not None, stop.requested)
                    if failed or stopping:  # every rank agrees, saves together, and ends
                        here = Position(epoch, b, pos.step)
                        self.save("last.pt", here, {"agg": agg, "clips": clips, "seconds": time.perf_counter() - t0})
                        bar.close()
                        if error is not None:
                            raise error
                        if failed:
                            raise UserError(f"rank {d.rank}: another rank could not read its data (its error above); "
                                            f"{self.dir / 'last.pt'} saved at epoch {epoch + 1}, batch {b}")
                        raise Preempted(stop.signum or 15, self._stop_message(stop.signum, here))
                    stats = self.step(batch, epoch)
                    pos = Position(epoch, b + 1, pos.step + 1)
                    clips += len(batch["clip_id"]) * d.world
                    for k, v in stats.items():
                        agg[k] = agg.get(k, 0.0) + v
                    self.log.write({"event": "step", "epoch": epoch, "step": pos.step, **stats})
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}")
                    if cfg.save_every and pos.step % cfg.save_every == 0 and b + 1 < n:
                        self.save("last.pt", pos, {"agg": agg, "clips": clips, "seconds": time.perf_counter() - t0})
                bar.close()
                seconds = time.perf_counter() - t0
                steps = n
                record = {"epoch": epoch, "steps": steps, "train_seconds": round(seconds, 2),
                          "clips_per_s": round(clips / max(seconds, 1e-9), 2),
                          **{f"train_{k}": v / max(steps, 1) for k, v in agg.items()}}
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    if self.use_cache:
                        self.features("val")  # collective: every rank computes its share
                    if d.is_main:
                        record.update(self.evaluate(scorer))
                self.history.append(record)
                self.log.write({"event": "epoch", **record})
                pos = Position(epoch + 1, 0, pos.step)
                score = d.broadcast(record.get("val_CIDEr"))
                if score is not None and score > self.best:
                    self.best = score
                    self.save("best.pt", pos)
                self.save("last.pt", pos)
                if self.progress:
                    val = f", val CIDEr {100 * score:.2f}" if score is not None else ""
                    if record.get("val_action_acc") is not None:
                        val += (f", action {100 * record['val_action_acc']:.0f}% colour "
                                f"{100 * record['val_colour_acc']:.0f}% shape {100 * record['val_shape_acc']:.0f}%")
                    print(f"{label} epoch {epoch + 1}/{cfg.epochs}: loss {record.get('train_loss', 0):.4f}, "
                          f"{record['clips_per_s']:.1f} clips/s{val}")
        if d.is_main:
            if not (self.dir / "best.pt").exists() and (self.dir / "last.pt").exists():
                write_bytes_atomic(self.dir / "best.pt", (self.dir / "last.pt").read_bytes())
            plot_curves(self.history, self.dir / "curves.png", label)
            self.log.close()
            run_lock.release(self.dir)
        return {"best_val_CIDEr": self.best, "history": self.history, "dir": str(self.dir)}


def run_stage(cfg: TrainConfig, progress: bool = True) -> dict:
    return Trainer(cfg, progress).fit()

