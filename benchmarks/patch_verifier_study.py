"""Would a small CNN that looks at each candidate's pixels make the detection verifier better?

The detector's target is held-out F1 >= 0.85 on the speckle_jpeg family; the shipped verifier
(hand-made evidence, ``engines/detection_verifier.py``) gets 0.82 there while keeping only the true
candidates would give 0.92. This study asks whether the pixels around a candidate hold what the
evidence misses: a CNN learns true-vs-false from a 32 x 32 window (``--context`` box half-sides
from the centre, robust z-scores of the frame at the detector's scale; dihedral augmentation),
its out-of-fold logit is added to the evidence, and the verifier is fitted and scored exactly as
``bench_verifier.py`` does (same frames, same cached candidates, same folds: the CNN of fold k
is trained without synthetic fold k and EMPS fold k). Not shipped; the result is recorded in
``bench_verifier.py``'s section of RESULTS.md.

    PYTHONPATH=src python benchmarks/patch_verifier_study.py [--context 3] [--width 12] [--epochs 6]

Needs ``bench_verifier.py``'s cached candidates of the bundled detector (it collects them when
missing, ~12 min); about 40 min on 2 CPU threads.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from itertools import zip_longest

import numpy as np
import torch
from bench_verifier import (
    CUTS,
    EMPS,
    EMPS_WEIGHT,
    cached_examples,
    emps_folds,
    f1_table,
    fitting_frames,
    held_out_probabilities,
    synthetic_folds,
)
from torch import nn

from napari_detection_qc.engines import load_detector
from napari_detection_qc.engines.base import as_grayscale
from napari_detection_qc.engines.detection_verifier import box_surroundings, frame_median_and_spread
from napari_detection_qc.engines.intensity import scale_to_255

COMMAND = "PYTHONPATH=src python benchmarks/patch_verifier_study.py"
GRID = 32
BATCH = 256
CLIP = 8.0


def candidate_windows(detector, rows: list[dict], context: float, workers: int) -> dict[str, np.ndarray]:
    """Per frame name, its cached candidates' windows of the frame at the detector's scale (frames
    shared among ``workers`` processes)."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = pool.map(partial(_windows_of_part, detector, rows, context, workers), range(workers))
        return {name: window for part in parts for name, window in part.items()}


def _windows_of_part(
    detector, rows: list[dict], context: float, parts: int, part: int
) -> dict[str, np.ndarray]:
    torch.set_num_threads(1)
    by_name = {row["name"]: row for row in rows}
    windows, start = {}, time.perf_counter()
    for number, (_, name, image, _) in enumerate(fitting_frames()):
        if number % parts != part or name not in by_name:
            continue
        boxes = np.asarray(by_name[name]["boxes"], dtype=np.float64)
        if not len(boxes):
            windows[name] = np.zeros((0, GRID, GRID), np.float32)
            continue
        resampled = detector.resampled(scale_to_255(as_grayscale(image), detector.normalisation))
        median, spread = frame_median_and_spread(resampled)
        crops = box_surroundings(resampled, boxes, context, GRID)
        windows[name] = np.clip((crops - median) / spread, -CLIP, CLIP)
        if len(windows) % 200 == 0:
            print(
                f"part {part}: windows of {len(windows)} frames, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    return windows


def patch_classifier(width: int) -> nn.Module:
    def stage(inputs: int, outputs: int) -> list[nn.Module]:
        return [
            nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
            nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]

    return nn.Sequential(
        *stage(1, width),
        *stage(width, 2 * width),
        *stage(2 * width, 4 * width),
        nn.Flatten(),
        nn.Linear(4 * width * (GRID // 8) ** 2, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(64, 1),
    )


def train_classifier(
    rows: list[dict], windows: dict, indices: list[int], width: int, epochs: int
) -> nn.Module:
    """Weighted logistic loss (EMPS weighs as in the verifier's fit), one-cycle AdamW, random
    quarter turns and flips; seeded."""
    used = [i for i in indices if len(rows[i]["true"])]
    x = torch.from_numpy(np.concatenate([windows[rows[i]["name"]] for i in used]))[:, None]
    y = torch.from_numpy(np.concatenate([rows[i]["true"] for i in used]).astype(np.float32))
    w = torch.from_numpy(
        np.concatenate(
            [np.full(len(rows[i]["true"]), EMPS_WEIGHT if rows[i]["source"] == EMPS else 1.0) for i in used]
        ).astype(np.float32)
    )
    torch.manual_seed(0)
    model = patch_classifier(width)
    steps = len(x) // BATCH
    optimiser = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=epochs * steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for step in range(steps):
            batch = order[step * BATCH : (step + 1) * BATCH]
            views = torch.rot90(x[batch], int(torch.randint(4, (1,))), (2, 3))
            if torch.rand(1) < 0.5:
                views = views.flip(3)
            loss = (
                nn.functional.binary_cross_entropy_with_logits(model(views)[:, 0], y[batch], reduction="none")
                * w[batch]
            ).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        print(f"  epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}", flush=True)
    return model.eval()


def out_of_fold_logits(rows: list[dict], windows: dict, width: int, epochs: int) -> list[np.ndarray]:
    """Each candidate's CNN logit (mean over four quarter turns) from a CNN trained without its frame."""
    logits = [np.zeros(0)] * len(rows)
    for number, (synthetic, real) in enumerate(
        zip_longest(synthetic_folds(rows), emps_folds(rows), fillvalue=[]), 1
    ):
        held = set(synthetic) | set(real)
        model = train_classifier(rows, windows, [i for i in range(len(rows)) if i not in held], width, epochs)
        with torch.no_grad():
            for i in held:
                if len(rows[i]["true"]):
                    x = torch.from_numpy(windows[rows[i]["name"]])[:, None]
                    logits[i] = np.mean(
                        [model(torch.rot90(x, k, (2, 3)))[:, 0].numpy() for k in range(4)], axis=0
                    )
        print(f"CNN fold {number}/5 done", flush=True)
    return logits


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", type=float, default=3.0, help="window reach in box half-sides")
    parser.add_argument("--width", type=int, default=12, help="the CNN's first-stage channels")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="CNN training threads")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes collecting windows and fitting verifiers"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = load_detector("default", device="cpu")
    rows = cached_examples(detector)
    windows = candidate_windows(detector, rows, args.context, args.workers)
    logits = out_of_fold_logits(rows, windows, args.width, args.epochs)
    with_cnn = [
        dict(
            row,
            evidence=np.column_stack([row["evidence"], logit])
            if len(row["true"])
            else np.zeros((0, row["evidence"].shape[1] + 1)),
        )
        for row, logit in zip(rows, logits)
    ]
    table = f1_table(with_cnn, held_out_probabilities(with_cnn, args.workers))
    table.loc["synthetic mean"] = table.drop(index=EMPS, errors="ignore").mean()
    print(
        f"evidence + CNN: held-out mean F1 per source, no verifier and at each cut {CUTS} (the shipped "
        "evidence alone: bench_verifier.py's table in RESULTS.md, same folds)"
    )
    print(table.round(3).to_string())
    print(f"reproduce: {COMMAND} --context {args.context:g} --width {args.width} --epochs {args.epochs}")


if __name__ == "__main__":
    main()
