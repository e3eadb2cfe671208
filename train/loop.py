"""One training loop, no framework, for every recipe (train/recipes.py): a step computes the
recipe's weighted losses (train/step.py) on frozen (cached) or trained CNN features. The paper's
stages are three recipes: (1) cross-entropy with the CNN frozen, (2) REINFORCE+, (3) everything
trained with 0.95 * RL + 0.05 * attribute BCE. Each recipe writes RUN/<dir>/ (stage1, stage2,
stage3, ...; train/run_folder.py names every file): config.json, metrics.jsonl, TensorBoard events
(tb/), best.pt (by val CIDEr), last.pt (for --resume) and curves.png.

Read it in this order: ``Trainer._setup`` lists the set-up's parts (data and run folder, model and
optimiser, the splits' references, reward, log, the step module); ``Trainer._fit`` is the epoch loop,
whose parts are one epoch of steps (``_train_epoch``: next batch, stop if asked, step, log) and its
end (``_end_epoch``: evaluate, keep the best, save).

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
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vidcap.atomic import write_atomic, write_bytes_atomic
from vidcap.errors import UserError
from vidcap.evalkit.coco import Scorer
from vidcap.evalkit.grounding import slot_accuracy
from vidcap.evalkit.metric_names import OBJECT_SLOTS, label
from vidcap.model import decoding
from vidcap.model.backbones import check_weights
from vidcap.model.base import VideoCaptioner
from vidcap.model.checkpoint import load_checkpoint, save_checkpoint
from vidcap.model.registry import create_model, make_config
from vidcap.shards.layout import DataInfo
from vidcap.tokens import MAX_LEN, decode
from vidcap.train import distributed, rng_state, run_lock
from vidcap.train.cnn_watch import CNNWatch
from vidcap.train.config import TrainConfig
from vidcap.train.data import SplitStream, rank_range, torch_loader
from vidcap.train.features import FeatureSet, cached_features, chunks, feature_batches, to_device
from vidcap.train.memory import check_model_fits
from vidcap.train.preempt import Preempted, StopFlag
from vidcap.train.recipes import RECIPES, STAGES
from vidcap.train.report import MetricsLog, NullLog, plot_curves
from vidcap.train.resume import Position, read_extra, training_extra
from vidcap.train.reward import make_reward
from vidcap.train.run_folder import BEST, LAST, RunFolder
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
        best = RunFolder(cfg.run).stage(before).best
        init = str(best)
        if not best.exists():
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
        config = make_config(cfg.preset, len(info.itos), **overrides)
        check_weights(config.backbone, config.backbone_weights, config.pretrained)
        check_model_fits(config, cfg.device, cfg.model_overrides, cfg.preset)  # before allocating it
        return create_model(config), None
    except (ValueError, FileNotFoundError) as e:  # the model's own checks of the settings it was given
        raise UserError(str(e)) from None


def param_groups(model: VideoCaptioner, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters for Adam: one group at cfg.lr, or -- when the CNN trains and
    cnn_lr_scale != 1 -- the CNN in a second group at lr * cnn_lr_scale. Why: one epoch of the
    captioner's lr moves a pretrained CNN's standardised features by most of their own length,
    and the LSTM reading them has to learn its input again (docs/training.md)."""
    params = [p for p in model.parameters() if p.requires_grad]
    cnn = {id(p) for p in model.backbone.parameters()}
    if cfg.cnn_lr_scale == 1.0 or not any(id(p) in cnn for p in params):
        return [{"params": params}]  # one group, as checkpoints before cnn_lr_scale have
    return [{"params": [p for p in params if id(p) not in cnn]},
            {"params": [p for p in params if id(p) in cnn], "lr": cfg.lr * cfg.cnn_lr_scale}]


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The share of each group's learning rate at `step` (0-based) of `total`: 1 throughout for
    "constant"; "cosine" falls from 1 to near 0 along half a cosine. A function of where training
    stands alone (the trainer passes epoch * batches + batch, not the steps taken, so a resume under
    another number of processes, which changes the batches per epoch, continues the same curve)."""
    if schedule == "constant" or total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


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


@dataclass
class _EpochTotals:
    """An epoch's running sums; last.pt keeps them mid-epoch, so a resumed epoch logs the same record."""

    agg: dict = field(default_factory=dict)
    clips: int = 0
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def resumed(cls, saved: dict) -> _EpochTotals:
        return cls(dict(saved.get("agg", {})), saved.get("clips", 0), time.perf_counter() - saved.get("seconds", 0.0))

    def add(self, stats: dict, clips: int) -> None:
        self.clips += clips
        for k, v in stats.items():
            self.agg[k] = self.agg.get(k, 0.0) + v

    def saved(self) -> dict:
        return {"agg": self.agg, "clips": self.clips, "seconds": time.perf_counter() - self.t0}


class Trainer:
    def __init__(self, cfg: TrainConfig, progress: bool = True):
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device, cfg.dist_timeout)
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        try:
            self._setup()
        except BaseException:
            self.dist.close()
            raise

    # ---- set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Each part needs the ones before it; under torchrun rank 0 reads and the others receive."""
        self._open_run()
        self._make_model()
        self._read_splits()
        reward = self._make_reward()
        self._open_log()
        self._set_feature_stats()
        self._make_step(reward)

    def _open_run(self) -> None:
        """The build, the stage's folder (locked before anything in it is read or written), the seeds."""
        cfg, d = self.cfg, self.dist
        self.info = DataInfo.load(cfg.data, cfg.skip_bad_shards)
        self.run = RunFolder(cfg.run)
        self.stage = self.run.stage(cfg.recipe)
        self.dir = self.stage.path
        d.on_main(lambda: run_lock.acquire(self.dir))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.position, self.best, self.history = Position(), float("-inf"), []
        self.epoch_progress: dict | None = None
        self.saved_rng: dict | None = None

    def _make_model(self) -> None:
        """The model (rank 0 loads or builds it; the others build its shape, DDP copies the weights),
        its frozen parts, the optimiser, and on --resume last.pt's training state."""
        cfg, d = self.cfg, self.dist
        model_config, extra, self.init_from = d.on_main(self._load_model)
        if not d.is_main:
            self.model = create_model({**model_config, "pretrained": False})
        self.model.to(self.device)
        self.model.freeze_backbone(not cfg.train_cnn, bn_stats=cfg.bn_stats)
        try:
            self.model.set_trunk(cfg.trunk_blocks)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.image_size = self.model.cfg.image_size
        self.opt = torch.optim.Adam(param_groups(self.model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]  # what lr_schedule scales (a restore keeps them)
        if cfg.resume:
            self._restore(extra)
        # a trained CNN: each epoch's record says how much of each block's gradient and motion there was
        self.cnn_watch = CNNWatch(self.model.backbone) if cfg.train_cnn else None

    def _read_splits(self) -> None:
        """One verifying pass over train and val (rank 0; the others get its result), then their references."""
        cfg, d = self.cfg, self.dist
        for split in ("train", "val"):
            data = d.on_main(lambda s=split: self.info.split(s))
            self.info.build.set_split(split, cfg.skip_bad_shards, data)
        self.train_refs, _ = split_metadata(self.info, "train", cfg.max_clips)
        self.val_refs, self.val_objects = split_metadata(self.info, "val", cfg.max_clips)
        self.n_train = len(self.info.metadata("train")[: cfg.max_clips])
        if not self.n_train or not self.val_refs:
            raise UserError(f"{self.info.root}: no {'training' if not self.n_train else 'validation'} clips "
                            "(an evaluation-only build? `train eval` it with a model trained elsewhere)")
        # trunk_blocks: the trunk is frozen, so its maps are cached too (with the frames the cues read)
        self.use_cache = (cfg.feature_cache and not cfg.train_cnn) or cfg.trunk_blocks > 0
        self.cache: dict[str, FeatureSet] = {}

    def _make_reward(self):
        """The RL reward over the training references (train/reward.py), for recipes with an RL term."""
        cfg = self.cfg
        if not cfg.rl_weight:
            return None
        df, n_docs = self.info.build.cider_df()
        return make_reward(cfg.reward, itos=self.info.itos, references=self.train_refs, df=df, n_docs=n_docs,
                           max_len=MAX_LEN)

    def _open_log(self) -> None:
        """config.json and metrics.jsonl (rank 0; a resumed run drops the records after its checkpoint)."""
        if self.dist.is_main:
            self.cfg.save(self.stage.config)
        resume_at = (self.position.epoch, self.position.step) if self.cfg.resume else None
        self.log = MetricsLog(self.dir, resume_at=resume_at) if self.dist.is_main else NullLog()

    def _set_feature_stats(self) -> None:
        """A fresh model with feature_norm standardises with the training set's statistics."""
        if self.model.cfg.feature_norm and self.init_from is None and not self.cfg.resume:
            cached = self.features("train").feats
            with torch.no_grad():  # a learned entry's features at its initial weights
                feats = torch.cat([self.model.features_from_cache(to_device(c, self.device)) for c in chunks(cached, 256)])
            self.model.set_feature_stats(feats)

    def _make_step(self, reward) -> None:
        """The recipe's loss as a module (train/step.py), wrapped in DDP under torchrun."""
        cfg, d = self.cfg, self.dist
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
            last = self.stage.last
            if not last.exists():
                raise UserError(f"{last}: nothing to resume")
            self.model, ckpt = load_checkpoint(last)
            return ckpt["config"], ckpt["extra"], ckpt["extra"].get("init_from")
        self.model, init_from = build_model(self.cfg, self.info)
        return self.model.config_dict(), {}, init_from

    def _restore(self, extra: dict) -> None:
        """Optimiser, position, history and this rank's RNG state from last.pt's extra (all ranks)."""
        state = read_extra(extra, self.stage.last, self.dist.rank, self.dist.world)
        saved = state.optimizer.get("param_groups") if isinstance(state.optimizer, dict) else None
        if state.lr_schedule != self.cfg.lr_schedule:
            raise UserError(f"{self.stage.last}: trained with lr_schedule={state.lr_schedule}, these settings say "
                            f"{self.cfg.lr_schedule}; resume with lr_schedule={state.lr_schedule}")
        if isinstance(saved, list) and len(saved) != len(self.opt.param_groups):
            raise UserError(f"{self.stage.last}: saved with {len(saved)} optimiser group(s), these settings "
                            f"make {len(self.opt.param_groups)} (cnn_lr_scale={self.cfg.cnn_lr_scale}); resume with "
                            f"the cnn_lr_scale it was trained with ({'1' if len(saved) == 1 else 'not 1'})")
        try:
            self.opt.load_state_dict(state.optimizer)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise UserError(f"{self.stage.last}: not a checkpoint to resume from ({type(e).__name__}: "
                            f"{str(e)[:100]})") from None
        self.position, self.best, self.history = state.position, state.best, state.history
        self.saved_rng, self.epoch_progress = state.rng, state.epoch_progress

    def close(self, synced: bool = False) -> None:
        self.dist.close(synced)

    # ---- data ---------------------------------------------------------------------------------
    def features(self, split: str) -> FeatureSet:
        """A split's cached CNN features (collective under torchrun: every rank calls it together)."""
        if split not in self.cache:
            t0 = time.perf_counter()
            self.cache[split] = cached_features(
                self.model, self.info, split, self.image_size, self.run.features,
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
        self.opt.zero_grad(set_to_none=True)  # before the forward: last step's gradients are not kept through it
        if cfg.accumulate > 1:  # micro-batches, each one's backward run as it goes (train/step.py)
            loss, stats = None, self.loss.accumulate(batch, epoch)
        else:
            loss, stats = self.step_module(batch, epoch)
        if d.world > 1:
            stats = reduce_stats(stats, cfg, d.sum(stat_vector(stats)), d.world)
        if not math.isfinite(stats["loss"]):  # never train on, or log, a NaN (every rank sees the same)
            terms_text = ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
            raise UserError(f"epoch {epoch + 1}: the loss is not finite ({terms_text}); training diverged: "
                            "lower lr, or check the data")
        if loss is not None:
            loss.backward()  # under DDP: gradients averaged over ranks
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.grad_clip)
        n, pos = self.n_batches(), self.position  # pos: the batches done, this step's own place
        scale = lr_factor(cfg.lr_schedule, pos.epoch * n + pos.batch, cfg.epochs * n)
        for group, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * scale
        self.opt.step()
        return stats

    def rates(self) -> dict[str, float]:
        """The learning rates the last step used: `lr`, and `cnn_lr` where the CNN has a group of its own."""
        groups = self.opt.param_groups
        return {"lr": groups[0]["lr"], **({"cnn_lr": groups[1]["lr"]} if len(groups) > 1 else {})}

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
            out.update({f"val_{k}": grounded[k] for k in OBJECT_SLOTS})
        return out

    # ---- checkpoints --------------------------------------------------------------------------
    def save(self, name: str, pos: Position, epoch_progress: dict | None = None) -> None:
        """Write RUN/<dir>/NAME on rank 0 with every rank's RNG state (collective under torchrun)."""
        rngs = self.dist.gather(rng_state.capture(self.device))
        if not self.dist.is_main:
            return
        extra = training_extra(self.cfg.recipe, pos, self.best, self.history, self.opt.state_dict(), rngs,
                               self.init_from, epoch_progress, self.cfg.lr_schedule)
        write_atomic(self.dir / name,  # unique temp name, removed on failure, then renamed
                     lambda f: save_checkpoint(f, self.model, self.info.itos, self.info.attributes, extra))

    def _stop_message(self, signum: int | None, pos: Position) -> str:
        why = {15: "SIGTERM", 2: "SIGINT"}.get(signum or 0, f"signal {signum}")
        return (f"stopped by {why} in epoch {pos.epoch + 1} after {pos.batch} of {self.n_batches()} batches "
                f"(step {pos.step}); {self.stage.last} saved: continue with --resume")

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        finished = False
        try:
            with StopFlag() as stop:
                result = self._fit(stop)
            finished = True
            return result
        except Exception as e:
            if self.dist.enabled and distributed.is_lost_peer(e):
                raise UserError(f"rank {self.dist.rank} of {self.dist.world}: lost the other ranks "
                                f"({' '.join(str(e).split())[:160]}); torchrun names the rank that failed") from None
            raise
        finally:
            self.close(synced=finished)

    def _fit(self, stop: StopFlag) -> dict:
        """The epochs from where the run stands: each trains, then ends (evaluate, keep the best, save)."""
        self._log_start()
        n = self.n_batches()
        with Scorer(meteor=False) if self.dist.is_main else nullcontext() as scorer:
            for epoch in range(self.position.epoch, self.cfg.epochs):
                record = self._train_epoch(epoch, n, stop)
                self._end_epoch(epoch, record, scorer)
        self._finish()
        return {"best_val_CIDEr": self.best, "history": self.history, "dir": str(self.dir)}

    def _log_start(self) -> None:
        cfg, d, pos = self.cfg, self.dist, self.position
        counts = self.model.parameter_counts()
        self.log.write({"event": "start", "recipe": cfg.recipe, "init_from": self.init_from, "params": counts,
                        "backbone_weights": self.model.backbone_info.weights, "start_epoch": pos.epoch,
                        "start_batch": pos.batch, "world_size": d.world})
        if self.progress:
            print(f"{recipe_label(cfg.recipe)}: {counts['total'] / 1e6:.2f} M parameters ({counts['backbone'] / 1e6:.2f} M "
                  f"backbone, {'trained' if cfg.train_cnn else 'frozen'}); starting from "
                  f"{self.init_from or self.model.backbone_info.weights}"
                  + (f"; {d.world} processes" if d.world > 1 else ""))

    def _train_epoch(self, epoch: int, n: int, stop: StopFlag) -> dict:
        """This rank's steps of `epoch` (from the resumed batch on), each logged; the epoch's record."""
        cfg, d = self.cfg, self.dist
        skip = self.position.batch if epoch == self.position.epoch else 0
        totals = _EpochTotals.resumed(self.epoch_progress or {}) if skip else _EpochTotals()
        if self.saved_rng is not None:  # right before the first step the checkpoint did not see
            rng_state.restore(self.saved_rng, self.device)
            self.saved_rng = None
        bar = tqdm(total=n, initial=skip, desc=f"{recipe_label(cfg.recipe)} epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=not self.progress, leave=False)
        batches = None
        for b in range(skip, n):
            batches, batch, error = self._next_batch(batches, epoch, skip, b, n)
            self._stop_if_asked(error, stop, Position(epoch, b, self.position.step), totals, bar)
            stats = self.step(batch, epoch)
            self.position = Position(epoch, b + 1, self.position.step + 1)
            totals.add(stats, len(batch["clip_id"]) * d.world)
            self.log.write({"event": "step", "epoch": epoch, "step": self.position.step, **stats,
                            **self.rates()})
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
            if cfg.save_every and self.position.step % cfg.save_every == 0 and b + 1 < n:
                self.save(LAST, self.position, totals.saved())
        bar.close()
        seconds = time.perf_counter() - totals.t0
        return {"epoch": epoch, "steps": n, "train_seconds": round(seconds, 2),
                "clips_per_s": round(totals.clips / max(seconds, 1e-9), 2),
                **{f"train_{k}": v / max(n, 1) for k, v in totals.agg.items()},
                **({"cnn_blocks": self.cnn_watch.epoch_record()} if self.cnn_watch else {})}

    def _next_batch(self, batches, epoch: int, skip: int, b: int, n: int) -> tuple:
        """(the epoch's iterator, started on first use; batch b or None; the UserError that stops it or None)."""
        try:
            batches = batches or iter(self.epoch_batches(epoch, skip))  # a DataLoader starts reading here
            return batches, next(batches), None
        except UserError as e:  # a shard that cannot be read (a server gone, a bad shard)
            return batches, None, e
        except StopIteration:
            return batches, None, UserError(f"epoch {epoch + 1}: the loader ended after {b} of {n} batches")

    def _stop_if_asked(self, error: UserError | None, stop: StopFlag, here: Position, totals: _EpochTotals,
                       bar: tqdm) -> None:
        """Before each step every rank agrees whether to stop (a signal, or any rank's unreadable data);
        if so all save last.pt at `here` together and end, with the reason."""
        d = self.dist
        failed, stopping = d.sum([error is not None, stop.requested]) if d.enabled else (
            error is not None, stop.requested)
        if not (failed or stopping):
            return
        self.save(LAST, here, totals.saved())
        bar.close()
        if error is not None:
            raise error
        if failed:
            raise UserError(f"rank {d.rank}: another rank could not read its data (its error above); "
                            f"{self.stage.last} saved at epoch {here.epoch + 1}, batch {here.batch}")
        raise Preempted(stop.signum or 15, self._stop_message(stop.signum, here))

    def _end_epoch(self, epoch: int, record: dict, scorer: Scorer | None) -> None:
        """Evaluate when due (rank 0), log the epoch, keep best.pt by val CIDEr, save last.pt."""
        cfg, d = self.cfg, self.dist
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            if self.use_cache:
                self.features("val")  # collective: every rank computes its share
            if d.is_main:
                record.update(self.evaluate(scorer))
        self.history.append(record)
        self.log.write({"event": "epoch", **record})
        self.position = Position(epoch + 1, 0, self.position.step)
        score = d.broadcast(record.get("val_CIDEr"))
        if score is not None and score > self.best:
            self.best = score
            self.save(BEST, self.position)
        self.save(LAST, self.position)
        if self.progress:
            self._print_epoch(epoch, record, score)

    def _print_epoch(self, epoch: int, record: dict, score: float | None) -> None:
        val = f", val CIDEr {100 * score:.2f}" if score is not None else ""
        if record.get("val_action_acc") is not None:
            val += ", " + " ".join(f"{label(k)} {100 * record[f'val_{k}']:.0f}%" for k in OBJECT_SLOTS)
        print(f"{recipe_label(self.cfg.recipe)} epoch {epoch + 1}/{self.cfg.epochs}: loss "
              f"{record.get('train_loss', 0):.4f}, {record['clips_per_s']:.1f} clips/s{val}")

    def _finish(self) -> None:
        """Rank 0: best.pt exists (last.pt when no epoch was evaluated), curves.png, the log closed, the lock freed."""
        if not self.dist.is_main:
            return
        if not self.stage.best.exists() and self.stage.last.exists():
            write_bytes_atomic(self.stage.best, self.stage.last.read_bytes())
        plot_curves(self.history, self.stage.curves, recipe_label(self.cfg.recipe))
        self.log.close()
        run_lock.release(self.dir)


def run_stage(cfg: TrainConfig, progress: bool = True) -> dict:
    return Trainer(cfg, progress).fit()

