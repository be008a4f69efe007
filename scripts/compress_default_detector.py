"""Derive a faster default detector from trained weights: drop hopeless RPN proposals at inference
and, optionally, make 3x3 convolutions on the finest map low-rank (the RPN head's, the FPN's P2
output) by the principal components of their outputs on training-stream frames. Deterministic:
the same source weights and frames give the same file.

    PYTHONPATH=src python scripts/compress_default_detector.py --source full.pt [--rpn-rank 32] [--frames 40]

The bundled model takes only the objectness cut (0.01: the same detections, a tenth faster on a
4096 px frame). Low rank is measured and not shipped: RPN head at rank 32 (2% of its output
variance) gave the same held-out F1 and EMPS F1 and a 4096 px frame 6% faster, but it moved the
automatic object size on 16 of 650 forest-study frames (tiny cavities among blotches sit on a near
tie) and the forest's cross-validated F1 MAE from 0.041 to 0.047; the FPN's P2 output at rank 32
cost 0.02 EMPS F1. The source must be a full-rank checkpoint of the default architecture (the
bundled weights are one). Then run ``scripts/choose_score_threshold.py --write`` and
``benchmarks/bench_detector.py --write-card``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from napari_detection_qc.engines.low_rank import OutputMoments, factor_conv
from napari_detection_qc.engines.registry import default_weights_path
from napari_detection_qc.engines.torchvision_maskrcnn import (
    COMPACT_FPN,
    TorchvisionDetector,
    build_maskrcnn,
    low_rank_site,
    save_model,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_default_detector import training_frame  # noqa: E402  (the training stream's frames)

CROP_PX = 1024
"""Each frame's top-left crop at trained scale: one inference tile."""


def compress(
    source: Path, ranks: dict[str, int], frames: int, min_objectness: float
) -> tuple[torch.nn.Module, dict, dict]:
    """(compressed model, its header, variance lost per site)."""
    detector = TorchvisionDetector.from_checkpoint(source, device="cpu")
    if detector.architecture.get("low_rank"):
        raise SystemExit(f"{source} is already low-rank: compress the full-rank weights it came from")
    detector.bfloat16 = False  # moments in float32, whatever this CPU has
    sites = {site: low_rank_site(detector.model, site) for site in ranks}
    moments = {site: OutputMoments(parent[index]) for site, (parent, index) in sites.items()}
    for seed in range(frames if ranks else 0):  # outputs are only needed for low-rank sites
        image, _ = training_frame(seed)
        detector._detect_boxes([image[:CROP_PX, :CROP_PX]], masks=False)
    architecture = copy.deepcopy(detector.architecture)
    if ranks:
        architecture["low_rank"] = dict(ranks)
    architecture["rpn"]["score_thresh_test"] = min_objectness
    model = build_maskrcnn(architecture)
    state = dict(detector.model.state_dict())
    lost = {}
    for site, (parent, index) in sites.items():
        mean, covariance = moments[site].close()
        factored, lost[site] = factor_conv(parent[index], mean, covariance, ranks[site])
        prefix = next(name for name, module in detector.model.named_modules() if module is parent[index])
        state = {k: v for k, v in state.items() if not k.startswith(prefix + ".")}
        state.update({f"{prefix}.{k}": v for k, v in factored.state_dict().items()})
    model.load_state_dict(state)
    header = {k: v for k, v in detector.header.items() if k not in ("sha256", "format", "format_version")}
    header["architecture"] = architecture
    training = (
        dict(header["training"]) if isinstance(header["training"], dict) else {"notes": header["training"]}
    )
    low_rank = (
        ", ".join(
            f"{site} rank {rank} ({lost[site]:.1%} of output variance lost)" for site, rank in ranks.items()
        )
        + f" by output principal components on training frames 0..{frames - 1} ({CROP_PX} px crops, float32); "
        if ranks
        else ""
    )
    training["compressed"] = (
        f"scripts/compress_default_detector.py from weights sha256 {detector.weights_sha256[:12]}: {low_rank}"
        f"RPN proposals under objectness {min_objectness:g} dropped at inference"
    )
    header["training"] = training
    return model.eval(), header, lost


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", type=Path, required=True, help="full-rank default-architecture checkpoint"
    )
    parser.add_argument("--frames", type=int, default=40, help="training-stream frames to collect outputs on")
    parser.add_argument(
        "--rpn-rank", type=int, default=COMPACT_FPN.get("low_rank", {}).get("rpn_conv", 0), help="0: full"
    )
    parser.add_argument(
        "--fpn-rank",
        type=int,
        default=COMPACT_FPN.get("low_rank", {}).get("fpn_p2_output", 0),
        help="0: full",
    )
    parser.add_argument("--min-objectness", type=float, default=COMPACT_FPN["rpn"]["score_thresh_test"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=default_weights_path())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ranks = {
        site: rank for site, rank in (("rpn_conv", args.rpn_rank), ("fpn_p2_output", args.fpn_rank)) if rank
    }
    model, header, lost = compress(args.source, ranks, args.frames, args.min_objectness)
    saved = save_model(args.out, model, header, half=True)
    TorchvisionDetector.from_checkpoint(args.out, device="cpu")  # it loads
    if lost:
        print(f"variance lost: {', '.join(f'{k} {v:.3f}' for k, v in lost.items())}")
    print(f"wrote {args.out} (sha256 {saved['sha256'][:12]}); {saved['training']['compressed']}")


if __name__ == "__main__":
    main()
