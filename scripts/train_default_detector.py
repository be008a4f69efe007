"""Train the bundled default detector: a compact Mask R-CNN on randomized realistic TEM frames.

Seeded, step-scheduled and resumable, so it reproduces on a 2-core CPU with no downloads and one
training can span sessions. Frames are made on the fly (realistic families from
``synthetic.make_realistic_frame`` plus the older named presets), normalised and resampled exactly
as inference does (robust intensity, then the factor that puts the frame's typical cavity at the
model's trained size, with the automatic estimate's error simulated by a random jitter), then
cropped with flips/rotations and intensity jitter; realistic frames without cavities can come at
any factor (hard negatives, ``TRAINING_MIX``). AdamW, warm-up, cosine over ``--steps``.

    PYTHONPATH=src python scripts/train_default_detector.py --steps 2400 --init src/napari_detection_qc/models/default_detector.pt
    PYTHONPATH=src python scripts/train_default_detector.py --resume scratch/detector/last.pt   # continue
    PYTHONPATH=src python scripts/train_default_detector.py --init <weights> --deepen 1,2,3,2 ...  # more blocks

A run stops at ``--steps`` (writes the model and its card) or at ``--max-minutes`` (writes a
float16 resume checkpoint with its seed, step and frame counter in the header; commit it and run
again with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_detection_qc.engines.checkpoint import float32_weights, load_checkpoint
from napari_detection_qc.engines.intensity import scale_to_255
from napari_detection_qc.engines.registry import default_weights_path
from napari_detection_qc.engines.scaling import ScaleRule
from napari_detection_qc.engines.torchvision_maskrcnn import (
    COMPACT_FPN,
    TorchvisionDetector,
    build_maskrcnn,
    new_checkpoint_header,
    save_model,
)
from napari_detection_qc.engines.training import (
    at_trained_scale,
    batch_losses,
    intensity_jitter,
    learning_rate,
    random_crop,
    typical_diameter,
)
from napari_detection_qc.synthetic import EMPTY_FRAME_FAMILIES, PRESETS, make_frame, make_realistic_frame

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "src" / "napari_detection_qc" / "models"
HELD_OUT_SEED = 1_000_000
SCALE_RULE = ScaleRule(target_px=22.0, min_factor=1 / 16, max_factor=1.5)
"""The bundled model's; ``--target-px`` trains at another typical object size (fewer pixels to
detect per frame at a smaller one)."""
NORMALISATION = {
    "intensity": "robust",
    "channel_order": "gray3",
    "pixel_mean": [128.0, 128.0, 128.0],
    "pixel_std": [64.0, 64.0, 64.0],
    "object_size": SCALE_RULE.to_header(),
}


def use_target_px(target_px: float) -> None:
    """Train at another typical object size: the rule every frame is resampled by, and the one the
    checkpoint header records for inference."""
    global SCALE_RULE
    SCALE_RULE = ScaleRule(float(target_px), SCALE_RULE.min_factor, SCALE_RULE.max_factor)
    NORMALISATION["object_size"] = SCALE_RULE.to_header()


TRAINING_MIX = {
    "realistic": 0.40,
    "big": 0.10,
    "tiny_dense": 0.10,
    "overfocus_rings": 0.10,
    "speckle_jpeg": 0.10,
    "preset": 0.20,
    "empty": 0.0,
    "tiny_upsampled": 0.0,
}
"""Share of training frames per source (the bundled model's recipe); "preset" draws one of the
older named presets, "empty" a realistic frame without cavities, resampled at any factor the
automatic size estimate may pick (hard negatives, ``EMPTY_FRAME_FAMILIES``; off by default: a
1600-step fine-tune of the bundled model with 10% of them halved the false detections on held-out
frames without cavities but did not raise held-out F1, and a gentler one cost
over-focus rings 0.06, see benchmarks/RESULTS.md); "tiny_upsampled"
a tiny_dense frame enlarged past the largest factor, up to the 2x the size estimate detects to
confirm small objects (off by default: a 1600-step fine-tune with 10% of them made held-out
tiny_dense frames worse, 0.845 -> 0.809, see benchmarks/RESULTS.md)."""
MAX_UPSAMPLED_VIEW_PX = 768
"""Tiny-cavity frames are cut to this side before they are enlarged (up to 3x)."""
MIN_EMPTY_VIEW_PX = 160
"""Empty frames are not shrunk below this side (smaller views hold nothing to learn from)."""
SIZE_ESTIMATE_ERROR = 0.2
"""Log-normal sigma of the simulated error of the automatic object-size estimate."""


def parse_mix(text: str) -> dict[str, float]:
    """``"realistic=0.3,big=0.2,..."`` -> shares of TRAINING_MIX's sources, normalised to sum 1."""
    mix = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        if name.strip() not in TRAINING_MIX:
            raise SystemExit(f"--mix: unknown source {name.strip()!r}; choose from {', '.join(TRAINING_MIX)}")
        mix[name.strip()] = float(share)
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise SystemExit("--mix: shares must be >= 0 and not all 0")
    return {k: v / sum(mix.values()) for k, v in mix.items()}


def normalised(raw: np.ndarray) -> np.ndarray:
    """A raw frame as inference normalises it (a blank frame: uniform grey)."""
    image = scale_to_255(raw, NORMALISATION)
    return np.full(raw.shape, 128.0, dtype=np.float32) if image is None else image


def training_frame(seed: int, mix: dict[str, float] = TRAINING_MIX) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``seed`` of the training stream at the model's trained scale: (0..255 image, labels)."""
    rng = np.random.default_rng([seed, 17])
    source = rng.choice(list(mix), p=list(mix.values()))
    if source == "empty":
        raw, labels, _ = make_realistic_frame(
            seed, str(rng.choice(EMPTY_FRAME_FAMILIES)), without_cavities=True
        )
        image = normalised(raw)
        low = max(SCALE_RULE.min_factor, min(1.0, MIN_EMPTY_VIEW_PX / min(raw.shape)))
        factor = float(np.exp(rng.uniform(np.log(low), np.log(SCALE_RULE.max_factor))))
        return at_trained_scale(image, labels, factor)
    if source == "tiny_upsampled":
        raw, labels, _ = make_realistic_frame(seed, "tiny_dense")
        top, left = (int(rng.integers(0, max(1, n - MAX_UPSAMPLED_VIEW_PX + 1))) for n in raw.shape)
        window = (slice(top, top + MAX_UPSAMPLED_VIEW_PX), slice(left, left + MAX_UPSAMPLED_VIEW_PX))
        image, labels = normalised(raw)[window], labels[window]
        ideal = SCALE_RULE.target_px / typical_diameter(labels) if labels.max() else SCALE_RULE.max_factor
        high = float(np.clip(ideal, SCALE_RULE.max_factor, 2 * SCALE_RULE.max_factor))
        factor = float(np.exp(rng.uniform(np.log(SCALE_RULE.max_factor), np.log(high))))
        return at_trained_scale(image, labels, factor)
    if source == "preset":
        preset = rng.choice(sorted(PRESETS))
        raw, labels = make_frame(seed, (512, 512), PRESETS[preset])
    else:
        raw, labels, _ = make_realistic_frame(seed, source)
    image = normalised(raw)
    diameter = typical_diameter(labels)
    factor = SCALE_RULE.factor_for(diameter)
    factor = float(
        np.clip(
            factor * np.exp(rng.normal(0, SIZE_ESTIMATE_ERROR)), SCALE_RULE.min_factor, SCALE_RULE.max_factor
        )
    )
    return at_trained_scale(image, labels, factor)


class FramePool:
    """A ring of training frames (at trained scale), one replaced every ``refresh_every`` steps."""

    def __init__(self, rng: np.random.Generator, size: int, first_seed: int, mix: dict[str, float]):
        self.rng = rng
        self.mix = mix
        self.next_seed = first_seed
        self.frames = [self._make() for _ in range(size)]

    def _make(self):
        frame = training_frame(self.next_seed, self.mix)
        self.next_seed += 1
        return frame

    def refresh(self) -> None:
        self.frames[int(self.rng.integers(len(self.frames)))] = self._make()

    def crop(self, size: int):
        image, labels = self.frames[int(self.rng.integers(len(self.frames)))]
        image, labels = random_crop(self.rng, image, labels, size)
        return intensity_jitter(self.rng, image), labels


def train(args, model, start_step: int, first_seed: int) -> tuple[torch.nn.Module, dict]:
    rng = np.random.default_rng([args.seed, start_step])
    torch.manual_seed(args.seed + start_step)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    pool = FramePool(rng, args.pool_size, first_seed, args.mix)
    start = time.monotonic()
    last_save, step, smoothed = start, start_step, None
    resumed_warmup = 0 if start_step == 0 else 50  # a fresh optimizer after a resume warms up again
    while step < args.steps and time.monotonic() - start < args.max_minutes * 60:
        lr = learning_rate(args.lr, step / args.steps, args.warmup)
        if step - start_step < resumed_warmup:
            lr *= (step - start_step + 1) / resumed_warmup
        for group in optimizer.param_groups:
            group["lr"] = lr
        crops = [pool.crop(args.crop_size) for _ in range(args.batch_size)]
        losses = batch_losses(
            model, [c[0] for c in crops], [c[1] for c in crops], args.architecture, NORMALISATION, "cpu"
        )
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        step += 1
        if step % args.refresh_every == 0:
            pool.refresh()
        value = float(loss.detach())
        smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
        if step % 25 == 0:
            parts = " ".join(f"{k.replace('loss_', '')}={float(v.detach()):.3f}" for k, v in losses.items())
            print(
                f"step {step}/{args.steps} t={(time.monotonic() - start) / 60:.1f}min lr={lr:.2e} "
                f"loss={smoothed:.3f} {parts}",
                flush=True,
            )
        if time.monotonic() - last_save > args.save_every_minutes * 60:
            save_model(args.resume_out, model, header(args, step, pool.next_seed), half=True)
            last_save = time.monotonic()
    model.eval()
    return model, {"steps": step, "minutes": (time.monotonic() - start) / 60, "next_seed": pool.next_seed}


def header(args, steps: int, next_seed: int, minutes: float | None = None) -> dict:
    training = {
        "data": "napari_detection_qc.synthetic: realistic families "
        + ", ".join(f"{k} {v:.0%}" for k, v in args.mix.items())
        + " (preset: one of the older named presets; empty: a realistic frame without cavities at any factor)",
        "mix": args.mix,
        "train_seeds": f"{args.first_seed}..{next_seed - 1}",
        "next_seed": next_seed,
        "held_out_seeds": f">= {HELD_OUT_SEED}",
        "scale": f"resampled to a {SCALE_RULE.target_px:g} px typical cavity (factor {SCALE_RULE.min_factor:g}-"
        f"{SCALE_RULE.max_factor:g}), estimate error simulated (log-sigma {SIZE_ESTIMATE_ERROR})",
        "crops": f"{args.batch_size} x {args.crop_size}x{args.crop_size} per step, flips/90-degree rotations, "
        "gain, offset, gamma, noise",
        "optimizer": f"AdamW lr {args.lr} wd {args.weight_decay}, warm-up {args.warmup:.0%}, cosine over "
        f"{args.steps} steps, grad clip {args.clip}",
        "steps": steps,
        "total_steps": args.steps,
        "seed": args.seed,
        "machine": f"{platform.machine()} CPU, {args.threads} threads, torch {torch.__version__}",
        "initialised_from": args.init_note,
    }
    if getattr(args, "schedule_note", None):
        training["schedule"] = args.schedule_note
    if getattr(args, "compressed_note", None):  # weights derived by compress_default_detector.py
        training["compressed"] = args.compressed_note
    if minutes is not None:
        training["minutes_this_run"] = round(minutes, 1)
    return new_checkpoint_header(
        args.architecture,
        name="default-compact-cavity-maskrcnn",
        normalisation=NORMALISATION,
        training=training,
    )


def initial_model(args) -> tuple[torch.nn.Module, int, int]:
    """(model, first step, first frame seed): fresh, initialised from weights, or resumed; a
    checkpoint's own architecture (e.g. a low-rank one) is kept."""
    args.architecture = COMPACT_FPN
    if args.resume is not None:
        saved_header, state = load_checkpoint(args.resume)
        args.architecture = saved_header["architecture"]
        model = build_maskrcnn(args.architecture)
        model.load_state_dict(float32_weights(state))
        training = saved_header["training"]
        if training.get("seed") != args.seed:
            raise SystemExit(
                f"{args.resume} was trained with --seed {training.get('seed')}; resume with the same seed"
            )
        if training.get("total_steps") != args.steps:  # a shorter or longer cosine from here on
            args.schedule_note = (
                f"{training.get('schedule', '')} {training.get('total_steps')}-step schedule until step "
                f"{training['steps']}, then {args.steps}"
            ).strip()
        else:
            args.schedule_note = training.get("schedule")
        args.init_note = training.get("initialised_from", "resumed")
        args.compressed_note = training.get("compressed")
        args.mix = training.get("mix", TRAINING_MIX)
        args.first_seed = int(str(training["train_seeds"]).split("..")[0])
        use_target_px(saved_header["input"]["object_size"]["target_px"])
        return model, int(training["steps"]), int(training["next_seed"])
    if args.init is not None:
        init_header, state = load_checkpoint(args.init)
        args.architecture = init_header["architecture"]
        state = float32_weights(state)
        training = init_header.get("training") if isinstance(init_header.get("training"), dict) else {}
        args.init_note = f"weights of {args.init.name} (sha256 {init_header['sha256'][:12]}, {training.get('steps') or '?'} steps)"
        if args.deepen is not None:
            model = deepened(args, state)
        else:
            model = build_maskrcnn(args.architecture)
            model.load_state_dict(state)
        args.compressed_note = training.get("compressed")
    else:
        args.init_note = "none (from scratch)"
        model = build_maskrcnn(args.architecture)
    return model, 0, args.first_seed


def deepened(args, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The ``--init`` model with more BasicBlocks per backbone stage (``--deepen``), each new block
    starting as the identity (its last BatchNorm scaled to 0), so training adds capacity to the
    trained model instead of starting over (blocks at strides 8-32 cost little time)."""
    backbone = args.architecture["backbone"]
    if backbone.get("name") != "compact" or len(args.deepen) != len(backbone["blocks_per_stage"]):
        raise SystemExit("--deepen needs a compact backbone and one block count per stage")
    if any(new < old for new, old in zip(args.deepen, backbone["blocks_per_stage"])):
        raise SystemExit(f"--deepen {args.deepen} would drop blocks of {backbone['blocks_per_stage']}")
    old_blocks = list(backbone["blocks_per_stage"])
    args.architecture = {**args.architecture, "backbone": {**backbone, "blocks_per_stage": list(args.deepen)}}
    model = build_maskrcnn(args.architecture)
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise SystemExit(f"weights the deepened model lacks: {unexpected[:5]}")
    body = model.backbone.body
    for stage, (old, new) in enumerate(zip(old_blocks, args.deepen), start=1):
        for block in list(getattr(body, f"layer{stage}"))[old:new]:
            torch.nn.init.zeros_(block.bn2.weight)
    args.init_note += (
        f", deepened from blocks {old_blocks} to {list(args.deepen)} (new blocks start as the identity)"
    )
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2400, help="total optimizer steps of the schedule")
    parser.add_argument(
        "--max-minutes", type=float, default=600.0, help="stop this run after this long (resumable)"
    )
    parser.add_argument(
        "--init", type=Path, default=None, help="start from these weights (and their architecture)"
    )
    parser.add_argument("--resume", type=Path, default=None, help="continue a run from its resume checkpoint")
    parser.add_argument(
        "--deepen",
        type=lambda text: [int(n) for n in text.split(",")],
        default=None,
        help='with --init: BasicBlocks per backbone stage, e.g. "1,2,2,1"',
    )
    parser.add_argument(
        "--mix", type=parse_mix, default=TRAINING_MIX, help='source shares, e.g. "realistic=0.4,big=0.1,..."'
    )
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="first frame seed of a new run (a later stage: past the last)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-size", type=int, default=320)
    parser.add_argument("--pool-size", type=int, default=48)
    parser.add_argument("--refresh-every", type=int, default=2, help="steps between new training frames")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--warmup", type=float, default=0.03, help="fraction of the steps")
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--target-px",
        type=float,
        default=SCALE_RULE.target_px,
        help="typical object diameter frames are resampled to (a resumed run keeps its own)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-every-minutes", type=float, default=5.0)
    parser.add_argument("--resume-out", type=Path, default=REPO / "scratch" / "detector" / "last.pt")
    parser.add_argument("--out", type=Path, default=default_weights_path())
    args = parser.parse_args(argv)
    if args.deepen is not None and args.init is None:
        parser.error("--deepen needs --init (the trained weights to deepen)")
    torch.set_num_threads(args.threads)
    args.resume_out.parent.mkdir(parents=True, exist_ok=True)
    use_target_px(args.target_px)

    model, start_step, first_seed = initial_model(args)
    model, summary = train(args, model, start_step, first_seed)
    fields = header(args, summary["steps"], summary["next_seed"], summary["minutes"])
    if summary["steps"] < args.steps:
        save_model(args.resume_out, model, fields, half=True)
        print(
            f"stopped at step {summary['steps']}/{args.steps}; resume with --resume {args.resume_out}",
            flush=True,
        )
        return
    saved = save_model(args.out, model, fields, half=True)
    TorchvisionDetector.from_checkpoint(args.out, device="cpu")  # it loads
    print(json.dumps(saved["training"], indent=1), flush=True)
    print(
        f"wrote {args.out}; run scripts/choose_score_threshold.py --write, then benchmarks/bench_detector.py --write-card",
        flush=True,
    )


if __name__ == "__main__":
    main()
