"""Pieces the steps share: layer pickers that choose the obvious layer, a one-line status that
never grows the dock, titled sections, the per-viewer session (forest in use, the layers a
detection just made) and turning our layers back into detections."""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np
from magicgui.widgets import ComboBox, Container
from magicgui.widgets.bases import Widget
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QGroupBox, QLabel, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from ..detections import StackDetections
from ..forest import QualityForest
from ..layer_pair import pair_problem, pair_record

DOCK_MAX_WIDTH = 560


class LayerPicker(ComboBox):
    """A combo box of the viewer's layers of one type, kept current as layers come, go and are
    renamed. While nothing is chosen it takes the obvious layer: the last one ``prefer`` accepts,
    else (with ``only_fallback``) the only layer of its type."""

    def __init__(self, viewer, layer_type, label: str, prefer: Callable[[Any], bool] | None = None,
                 only_fallback: bool = True, **kwargs):
        self._viewer = viewer
        self._layer_type = layer_type
        self._prefer = prefer
        self._only_fallback = only_fallback
        super().__init__(label=label, choices=self._layers, nullable=True, **kwargs)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh)
        events.inserted.connect(lambda event: event.value.events.name.connect(self._refresh))
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh)
        self._refresh()

    def _layers(self, _widget=None):
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, self._layer_type)]

    def obvious(self):
        candidates = [layer for _, layer in self._layers()]
        preferred = [layer for layer in candidates if self._prefer is not None and self._prefer(layer)]
        if preferred:
            return preferred[-1]
        return candidates[0] if self._only_fallback and len(candidates) == 1 else None

    def _refresh(self, _event=None):
        self.reset_choices()
        if self.value is None:
            obvious = self.obvious()
            if obvious is not None:
                self.value = obvious


def has_detection_record(layer) -> bool:
    return bool(pair_record(layer.metadata).get("pair_id"))


def has_scores(layer) -> bool:
    return "score" in layer.features.columns


class ViewerSession:
    """What one viewer's steps share: the forest trained or loaded in the Training step
    (``forest``, described honestly by ``source``), the one Quality predicted with last
    (``in_use``), the layers a detection is writing (``detecting``) and the results dock."""

    forest_changed = Signal(object)
    detections_changed = Signal(object, object, bool)  # masks, boxes, finished
    detector_saved = Signal(str, str)  # a fine-tuned model's weights file, the image layer it was tuned on

    def __init__(self):
        self.forest: QualityForest | None = None
        self.in_use: QualityForest | None = None
        self.source = ""
        self.detecting: set[int] = set()  # ids of layers a running detection writes
        self.results = None

    def set_forest(self, forest: QualityForest, source: str) -> None:
        self.forest, self.source = forest, source
        self.forest_changed.emit(forest)

    def is_busy(self, *layers) -> bool:
        return any(id(layer) in self.detecting for layer in layers if layer is not None)


_sessions: weakref.WeakKeyDictionary[Any, ViewerSession] = weakref.WeakKeyDictionary()


def viewer_session(viewer) -> ViewerSession:
    """One ViewerSession per viewer, shared by that viewer's steps."""
    if viewer not in _sessions:
        _sessions[viewer] = ViewerSession()
    return _sessions[viewer]


class StatusLine(QLabel):
    """One status line: elided to the dock's width and of fixed height (it never grows the dock),
    the full text in its tooltip; errors and warnings also go to napari's notifications."""

    def __init__(self):
        super().__init__()
        self._text = ""
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(self.fontMetrics().height() + 6)

    @property
    def value(self) -> str:
        return self._text

    @value.setter
    def value(self, text: str) -> None:
        self._text = str(text)
        self.setToolTip(self._text)
        self._elide()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        width = max(self.width() - 4, 20)
        self.setText(self.fontMetrics().elidedText(self._text, Qt.TextElideMode.ElideRight, width))

    def info(self, text: str) -> None:
        self.value = text
        show_info(text)

    def warn(self, text: str) -> None:
        self.value = f"⚠ {text}"
        show_warning(text)

    def error(self, text: str) -> None:
        self.value = f"✖ {text}"
        show_error(text)


class Step(QWidget):
    """One step of the workflow: titled sections stacked top to bottom in a scroll area (a short
    screen scrolls instead of overflowing), and a status line below it that stays in view. Other
    features add their own section with ``add_section``."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = viewer_session(napari_viewer)
        self.setMaximumWidth(DOCK_MAX_WIDTH)
        self.body = QWidget()
        self._sections = QVBoxLayout(self.body)
        self._sections.setContentsMargins(0, 0, 0, 0)
        self._sections.setSpacing(4)
        self._sections.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.body)
        self.status = StatusLine()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.scroll)
        layout.addWidget(self.status)

    def add_section(self, title: str, *items, collapsed: bool = False) -> QGroupBox:
        """A titled section of magicgui widgets (laid out as a labelled form) and Qt widgets, in
        order, below the sections already there. ``collapsed``: the section is one line, its title a
        toggle that shows the contents (occasional work, so the step still fits the screen)."""
        box = QGroupBox(title)
        layout = QVBoxLayout(box)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(2)
        form: list[Widget] = []
        for item in [*items, None]:
            if isinstance(item, Widget):
                form.append(item)
                continue
            if form:
                container = Container(widgets=form, labels=True)
                container.margins = (0, 0, 0, 0)
                layout.addWidget(container.native)
                form = []
            if item is not None:
                layout.addWidget(item)
        if collapsed:  # one line, the title as a toggle; the contents show below it when open
            box.setTitle("")
            box.setFlat(True)
            box.setStyleSheet("QGroupBox { border: none; margin: 0px; padding: 0px; }")
            layout.setContentsMargins(0, 0, 0, 0)
            toggle = QToolButton()
            toggle.setText(title)
            toggle.setCheckable(True)
            toggle.setArrowType(Qt.ArrowType.RightArrow)
            toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            toggle.setStyleSheet("QToolButton { border: none; }")
            contents = [layout.itemAt(i).widget() for i in range(layout.count())]

            def show(shown: bool) -> None:
                toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
                for widget in contents:
                    widget.setVisible(shown)

            toggle.toggled.connect(show)
            layout.insertWidget(0, toggle)
            show(False)
        self._sections.insertWidget(self._sections.count() - 1, box)
        return box


def row(*widgets) -> Container:
    """Widgets side by side (e.g. a row of buttons)."""
    container = Container(widgets=list(widgets), layout="horizontal", labels=False)
    container.margins = (0, 0, 0, 0)
    return container


def detections_from_layers(masks: Labels | None, boxes: Shapes | None) -> StackDetections:
    """Detections rebuilt from a Labels layer and a Shapes layer with a ``score`` feature; any
    problem, including layers that do not belong together, raises ValueError for the user."""
    if masks is None or boxes is None:
        raise ValueError("pick a masks (Labels) layer and a boxes (Shapes) layer")
    if "score" not in boxes.features.columns:
        raise ValueError(f"the Shapes layer '{boxes.name}' has no 'score' feature; it must hold detection scores")
    data = labels_data(masks)
    if data.ndim not in (2, 3):
        raise ValueError(f"the Labels layer '{masks.name}' is {data.ndim}-D; use a (Y, X) or (T, Y, X) layer")
    problem = pair_problem(masks.name, data.shape, masks.metadata, boxes.name, boxes.data, boxes.metadata)
    if problem:
        raise ValueError(problem)
    return StackDetections.from_layer_data(data, boxes.data, boxes.features)


def labels_data(layer: Labels) -> np.ndarray:
    """A Labels layer's full-resolution array."""
    data = layer.data
    return np.asarray(data[0] if isinstance(data, (list, tuple)) else data)


def layer_detector(layer) -> dict | None:
    """The detector description our detection step stored on a layer, if any."""
    return pair_record(layer.metadata).get("detector") if layer is not None else None
