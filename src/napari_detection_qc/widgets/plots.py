"""Matplotlib canvases embedded in the docks: the per-frame quality plot and the parity plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from psygnal import Signal

BACKGROUND = "#262930"  # napari's dark theme
FOREGROUND = "#d6d9de"


def _dark_axes(figure: Figure):
    axes = figure.add_subplot(111)
    figure.patch.set_facecolor(BACKGROUND)
    style_dark(axes)
    return axes


def style_dark(axes) -> None:
    """napari's dark theme on one axes."""
    axes.set_facecolor(BACKGROUND)
    for spine in axes.spines.values():
        spine.set_color(FOREGROUND)
    axes.tick_params(colors=FOREGROUND, labelsize=8)
    axes.xaxis.label.set_color(FOREGROUND)
    axes.yaxis.label.set_color(FOREGROUND)


class QualityPlot(FigureCanvasQTAgg):
    """Predicted F1 per frame with its interval; frames under the threshold in red, out-of-domain
    frames ringed in orange, the current frame shaded. Clicking emits the nearest frame. A single
    image gets F1, precision and recall as bars with their intervals instead of a one-dot line."""

    frame_clicked = Signal(int)

    def __init__(self):
        self.figure = Figure(figsize=(5, 2.2), tight_layout=True)
        super().__init__(self.figure)
        self.axes = _dark_axes(self.figure)
        self.count_axes = self.axes.twinx()  # estimated true count per frame, on its own scale
        self.table: pd.DataFrame | None = None
        self._current = None
        self.setMinimumHeight(150)
        self.mpl_connect("button_press_event", self._on_click)

    def clear(self) -> None:
        self.table = None
        self.axes.clear()
        self.count_axes.clear()
        self.count_axes.set_visible(False)
        self._current = None
        self.draw_idle()

    def show_table(self, table: pd.DataFrame, threshold: float, current: int | None) -> None:
        self.table = table
        self.axes.clear()
        self.count_axes.clear()
        self._current = None
        self.count_axes.set_visible(len(table) > 1 and "count_estimate" in table.columns)
        if len(table) == 1:
            self._show_single(table.iloc[0], threshold)
        else:
            if self.count_axes.get_visible():
                self._show_counts(table)
            self._show_frames(table, threshold)
            self.highlight(current)
        self.draw_idle()

    def _show_counts(self, table: pd.DataFrame) -> None:
        """Estimated true count (grey, with its 90% band) and the raw detection count (dots), right axis."""
        axes = self.count_axes
        frames = table["frame"].to_numpy()
        axes.fill_between(
            frames, table["count_low"], table["count_high"], color="#b0b0b0", alpha=0.12, step="mid"
        )
        axes.plot(frames, table["count_estimate"], color="#b0b0b0", lw=1.0, label="estimated count")
        axes.plot(frames, table["count"], ".", color="#b0b0b0", ms=3, label="detections")
        axes.set_ylim(bottom=0)
        axes.yaxis.tick_right()  # clear() puts a twin axis's ticks and label back on the left
        axes.yaxis.set_label_position("right")
        axes.set_ylabel("count", color=FOREGROUND, fontsize=7)
        axes.tick_params(colors=FOREGROUND, labelsize=7)

    def _show_single(self, row: pd.Series, threshold: float) -> None:
        axes = self.axes
        names = ["recall", "precision", "f1"]
        values = [row[name] for name in names]
        low = [row[f"{name}_low"] if f"{name}_low" in row else row[name] for name in names]
        high = [row[f"{name}_high"] if f"{name}_high" in row else row[name] for name in names]
        colours = ["#e3b55a", "#9ad18b", "#e0475b" if row["f1"] < threshold else "#4a90d9"]
        axes.barh(names, values, color=colours, height=0.55)
        axes.errorbar(
            values,
            names,
            xerr=[np.subtract(values, low), np.subtract(high, values)],
            fmt="none",
            ecolor=FOREGROUND,
            capsize=3,
            lw=1,
        )
        axes.axvline(threshold, color=FOREGROUND, ls="--", lw=0.8)
        axes.set_xlim(0, 1.03)
        axes.set_xlabel("predicted value (error bars: 90% interval)")
        title = "this image" + ("" if bool(row["in_domain"]) else " (outside the forest's experience)")
        axes.set_title(title, color=FOREGROUND, fontsize=8)

    def _show_frames(self, table: pd.DataFrame, threshold: float) -> None:
        axes = self.axes
        frames = table["frame"].to_numpy()
        f1 = table["f1"].to_numpy()
        low, high = table["f1_low"].to_numpy(), table["f1_high"].to_numpy()
        poor = f1 < threshold
        outside = ~table["in_domain"].to_numpy(dtype=bool)
        axes.fill_between(frames, low, high, color="#4a90d9", alpha=0.18, step="mid", label="90% interval")
        axes.plot(frames, table["precision"], color="#9ad18b", lw=1.4, ls="--", label="precision")
        axes.plot(frames, table["recall"], color="#e3b55a", lw=1.4, ls=":", label="recall")
        axes.plot(frames, f1, color="#4a90d9", lw=1.0)
        axes.scatter(frames[~poor], f1[~poor], s=18, color="#4a90d9", zorder=3, label="predicted F1")
        axes.scatter(frames[poor], f1[poor], s=22, color="#e0475b", zorder=3, label=f"F1 < {threshold:g}")
        if outside.any():
            axes.scatter(
                frames[outside],
                f1[outside],
                s=80,
                facecolors="none",
                edgecolors="#ff9f1c",
                linewidths=1.4,
                zorder=4,
                label="out of domain",
            )
        axes.axhline(threshold, color=FOREGROUND, ls="--", lw=0.8)
        axes.set_ylim(-0.04, 1.06)  # room for the markers at 0 and 1
        axes.set_xlim(frames.min() - 0.6, frames.max() + 0.6)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("frame")
        axes.set_ylabel("predicted F1, P, R")
        handles, labels = axes.get_legend_handles_labels()
        count_handles, count_labels = self.count_axes.get_legend_handles_labels()
        legend = axes.legend(  # right of the count axis's ticks and label, with the count's lines too
            handles + count_handles,
            labels + count_labels,
            loc="center left",
            bbox_to_anchor=(1.09, 0.5),
            fontsize=7,
            frameon=False,
        )
        for text in legend.get_texts():
            text.set_color(FOREGROUND)

    def highlight(self, frame: int | None) -> None:
        if self._current is not None:
            self._current.remove()
            self._current = None
        if frame is not None and self.table is not None and len(self.table) > 1:
            self._current = self.axes.axvspan(frame - 0.5, frame + 0.5, color="white", alpha=0.15, zorder=0)
        self.draw_idle()

    def _on_click(self, event) -> None:
        if (
            event.inaxes not in (self.axes, self.count_axes)
            or event.xdata is None
            or self.table is None
            or len(self.table) < 2
        ):
            return
        frames = self.table["frame"].to_numpy()
        self.frame_clicked.emit(int(frames[np.argmin(np.abs(frames - event.xdata))]))


class ParityPlot(FigureCanvasQTAgg):
    """Cross-validated predicted vs true F1 after a refit; the user's frames highlighted."""

    def __init__(self):
        self.figure = Figure(figsize=(3.2, 2.2), tight_layout=True)
        super().__init__(self.figure)
        self.axes = _dark_axes(self.figure)
        self.setMinimumHeight(150)

    def clear(self) -> None:
        self.axes.clear()
        self.draw_idle()

    def show_predictions(self, true_f1, predicted_f1, is_new) -> None:
        axes = self.axes
        axes.clear()
        true_f1, predicted_f1 = np.asarray(true_f1), np.asarray(predicted_f1)
        is_new = np.asarray(is_new, dtype=bool)
        axes.plot([0, 1], [0, 1], color=FOREGROUND, ls="--", lw=0.8)
        axes.scatter(
            true_f1[~is_new],
            predicted_f1[~is_new],
            s=6,
            color="#4a90d9",
            alpha=0.5,
            label="earlier training frames",
        )
        axes.scatter(true_f1[is_new], predicted_f1[is_new], s=24, color="#ff9f1c", label="your frames")
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("true F1")
        axes.set_ylabel("predicted F1 (CV)")
        legend = axes.legend(loc="upper left", fontsize=7, frameon=False)
        for text in legend.get_texts():
            text.set_color(FOREGROUND)
        self.draw_idle()


class TrainingCurves(FigureCanvasQTAgg):
    """Live fine-tuning graphs side by side, to fit the low results dock: the loss parts on
    training and held-out crops, held-out F1/P/R (the same drawing as the CLI's PNG)."""

    def __init__(self):
        self.figure = Figure(figsize=(9.0, 2.2), tight_layout=True)
        super().__init__(self.figure)
        self.setMinimumHeight(180)

    def show_history(self, history: pd.DataFrame) -> None:
        from napari_detection_qc.finetune.outputs import draw_curves

        draw_curves(self.figure, history, side_by_side=True)
        self.figure.patch.set_facecolor(BACKGROUND)
        for axes in self.figure.axes:
            style_dark(axes)
            legend = axes.get_legend()
            for text in legend.get_texts() if legend is not None else ():
                text.set_color(FOREGROUND)
            axes.set_title(axes.get_title(loc="left"), loc="left", fontsize=8, color=FOREGROUND)
        self.draw_idle()
