"""Draw examples of every realistic synthetic family, raw and with ground-truth outlines.

Why: the figure is how a reader judges whether the randomized frames look like real TEM cavity
micrographs (blotchy, noisy, varied) rather than clean cartoons. Reproduce with:

    PYTHONPATH=src python scripts/make_realistic_figure.py [--seed 0] [--out docs/realistic_families.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_detection_qc.synthetic import REALISTIC_FAMILIES, make_realistic_frame  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's drawing helpers
from make_domain_figure import outline_overlay, save_with_palette  # noqa: E402

EXAMPLES_PER_FAMILY = 3
"""Per family: the first example is shown twice, raw and with outlines; then the others raw."""


def display_range(image: np.ndarray) -> tuple[float, float]:
    """0-255 for 8-bit frames; the 0.1-99.9 percentiles for 16-bit ones (hot pixels, offset)."""
    if image.dtype == np.uint8:
        return 0.0, 255.0
    low, high = np.percentile(image, (0.1, 99.9))
    return float(low), float(max(high, low + 1))


def describe(info: dict) -> str:
    diameter = "none" if info["diameter_px"] is None else f"{info['diameter_px']:.0f} px"
    file_kind = f"{info['bit_depth']}-bit" + (f" q{info['jpeg_quality']}" if info.get("jpeg_quality") else "")
    focus = info["domain"]["focus"] if info["domain"]["defocus"] > 0.25 else "near"
    return (
        f"{info['shape'][1]}x{info['shape'][0]} {file_kind}\n{info['n_cavities']} cav, d {diameter}, {focus}"
    )


def draw(seed: int, out: Path) -> None:
    n_cols = EXAMPLES_PER_FAMILY + 1
    fig, axes = plt.subplots(
        len(REALISTIC_FAMILIES), n_cols, figsize=(3.6 * n_cols, 3.9 * len(REALISTIC_FAMILIES)), dpi=100
    )
    for row, family in enumerate(REALISTIC_FAMILIES):
        for example in range(EXAMPLES_PER_FAMILY):
            image, labels, info = make_realistic_frame(seed + example, family)
            vmin, vmax = display_range(image)
            columns = (0, 1) if example == 0 else (example + 1,)
            for col in columns:
                ax = axes[row, col]
                ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="antialiased")
                if col == 1:
                    ax.imshow(outline_overlay(labels), interpolation="nearest")
                    ax.set_title("ground truth", fontsize=10)
                else:
                    ax.set_title(f"{family} #{seed + example}: {describe(info)}", fontsize=10)
                ax.axis("off")
    fig.suptitle(
        f"Realistic synthetic TEM families (seeds {seed}-{seed + EXAMPLES_PER_FAMILY - 1})", fontsize=15
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_with_palette(fig, out)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "realistic_families.png"
    )
    args = parser.parse_args()
    draw(args.seed, args.out)


if __name__ == "__main__":
    main()
