"""Draw one synthetic frame per domain preset, raw and with its ground-truth outlines.

Why: the figure is how a reader judges whether the generator's frames look like real TEM
cavity micrographs and what each domain shift does. Reproduce with:

    PYTHONPATH=src python scripts/make_domain_figure.py [--seed 1] [--out docs/synthetic_domains.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from napari_detection_qc.synthetic import PRESETS, make_frame  # noqa: E402

PRESETS_PER_ROW = 4
OUTLINE_RGBA = (1.0, 0.15, 0.1, 1.0)


def outline_overlay(labels: np.ndarray) -> np.ndarray:
    """RGBA image, transparent except on the inner boundary of every labelled cavity."""
    overlay = np.zeros((*labels.shape, 4))
    overlay[find_boundaries(labels, mode="inner")] = OUTLINE_RGBA
    return overlay


def save_with_palette(fig, out: Path) -> None:
    """Save as a 256-colour PNG: noisy grey frames compress badly, a palette quarters the file."""
    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def draw(seed: int, out: Path) -> None:
    names = list(PRESETS)
    n_rows = 2 * int(np.ceil(len(names) / PRESETS_PER_ROW))
    fig, axes = plt.subplots(n_rows, PRESETS_PER_ROW, figsize=(4 * PRESETS_PER_ROW, 4.2 * n_rows), dpi=100)
    for ax in axes.ravel():
        ax.axis("off")
    for index, name in enumerate(names):
        image, labels = make_frame(seed, domain=name)
        row, col = 2 * (index // PRESETS_PER_ROW), index % PRESETS_PER_ROW
        for ax, with_outlines in ((axes[row, col], False), (axes[row + 1, col], True)):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if with_outlines:
                ax.imshow(outline_overlay(labels), interpolation="nearest")
        axes[row, col].set_title(f"{name}  ({labels.max()} cavities)", fontsize=13)
    fig.suptitle(
        f"Synthetic TEM cavity frames per domain preset (seed {seed}); second row: ground truth", fontsize=15
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_with_palette(fig, out)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "synthetic_domains.png"
    )
    args = parser.parse_args()
    draw(args.seed, args.out)


if __name__ == "__main__":
    main()
