"""Draw examples of every synthetic defect family (``synthetic.DEFECT_FAMILIES``), raw and with
their ground-truth outlines.

Why: the figure is how a reader judges whether the frames look like TEM micrographs of dislocation
loops, black dots and precipitates, and whether the masks are the drawn objects. Reproduce with:

    PYTHONPATH=src python benchmarks/make_defect_figure.py [--seed 0] [--out docs/defect_families.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from napari_detection_qc.synthetic import DEFECT_FAMILIES, make_defect_frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the domain and realistic figures' drawing helpers
from make_domain_figure import outline_overlay, save_with_palette  # noqa: E402
from make_realistic_figure import display_range  # noqa: E402

EXAMPLES_PER_FAMILY = 3
"""Per family: the first example is shown twice, raw and with outlines; then the others raw."""


def describe(info: dict) -> str:
    diameter = "none" if info["diameter_px"] is None else f"{info['diameter_px']:.0f} px"
    file_kind = f"{info['bit_depth']}-bit" + (f" q{info['jpeg_quality']}" if info.get("jpeg_quality") else "")
    return f"{file_kind}, {info['n_objects']} objects, median d {diameter}"


def draw(seed: int, out: Path) -> None:
    n_cols = EXAMPLES_PER_FAMILY + 1
    fig, axes = plt.subplots(
        len(DEFECT_FAMILIES), n_cols, figsize=(3.2 * n_cols, 3.7 * len(DEFECT_FAMILIES)), dpi=75
    )
    for row, family in enumerate(DEFECT_FAMILIES):
        for example in range(EXAMPLES_PER_FAMILY):
            image, labels, info = make_defect_frame(seed + example, family)
            vmin, vmax = display_range(image)
            for col in (0, 1) if example == 0 else (example + 1,):
                ax = axes[row, col]
                ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="antialiased")
                if col == 1:
                    ax.imshow(outline_overlay(labels), interpolation="nearest")
                    ax.set_title("ground truth", fontsize=9)
                else:
                    ax.set_title(f"{family} #{seed + example}\n{describe(info)}", fontsize=9)
                ax.axis("off")
    fig.suptitle(
        f"Synthetic defect families, 512 x 512 (seeds {seed}-{seed + EXAMPLES_PER_FAMILY - 1})", fontsize=13
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_with_palette(fig, out)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "defect_families.png")
    args = parser.parse_args()
    draw(args.seed, args.out)


if __name__ == "__main__":
    main()
