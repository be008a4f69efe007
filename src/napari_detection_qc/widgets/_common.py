"""Pieces the three widgets share: layer pickers, messages, the per-viewer forest in use, and
turning our layers back into detections."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtCore import Qt

from ..detections import StackDetections
from ..forest import QualityForest
from ..pixel_sizes import METADATA_KEY


class LayerPicker(ComboBox):
    """A combo box of the viewer's layers of one type, kept current as layers come and go."""

    def __init__(self, viewer, layer_type, label: str, **kwargs):
        self._viewer = viewer
        self._layer_type = layer_type
        super().__init__(label=label, choices=self._layers, nullable=True, **kwargs)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh)
        # a layer renamed by the user must show its new name
        viewer.layers.events.inserted.connect(lambda e: e.value.events.name.connect(self._refresh))

    def _layers(self, _widget=None):
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, self._layer_type)]

    def _refresh(self, _event=None):
        self.reset_choices()


class ForestSession:
    """Forests shared by one viewer's widgets: ``forest`` is the one trained (or loaded) in the
    training widget, ``in_use`` the one the quality widget predicted with last."""

    changed = Signal(object)

    def __init__(self):
        self.forest: QualityForest | None = None
        self.in_use: QualityForest | None = None
        self.source = ""

    def set(self, forest: QualityForest, source: str) -> None:
        self.forest, self.source = forest, source
        self.changed.emit(forest)


_sessions: weakref.WeakKeyDictionary[Any, ForestSession] = weakref.WeakKeyDictionary()


def forest_session(viewer) -> ForestSession:
    """One ForestSession per viewer, shared by that viewer's widgets."""
    if viewer not in _sessions:
        _sessions[viewer] = ForestSession()
    return _sessions[viewer]


class StatusLabel(Label):
    """A status line under a widget (wraps instead of widening the dock); errors also go to
    napari's notifications."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.native.setWordWrap(True)
        self.native.setAlignment(Qt.AlignmentFlag.AlignLeft)

    def info(self, text: str) -> None:
        self.value = text
        show_info(text)

    def warn(self, text: str) -> None:
        self.value = f"⚠ {text}"
        show_warning(text)

    def error(self, text: str) -> None:
        self.value = f"✖ {text}"
        show_error(text)


def detections_from_layers(masks: Labels | None, boxes: Shapes | None) -> StackDetections:
    """Detections rebuilt from a Labels layer and a Shapes layer with a ``score`` feature; any
    problem raises ValueError with a message meant for the user."""
    if masks is None or boxes is None:
        raise ValueError("pick a masks (Labels) layer and a boxes (Shapes) layer")
    if "score" not in boxes.features.columns:
        raise ValueError(f"the Shapes layer '{boxes.name}' has no 'score' feature; it must hold detection scores")
    data = masks.data
    if isinstance(data, (list, tuple)):  # multiscale: the full-resolution level
        data = data[0]
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(f"the Labels layer '{masks.name}' is {data.ndim}-D; use a (Y, X) or (T, Y, X) layer")
    return StackDetections.from_layer_data(data, boxes.data, boxes.features)


def layer_detector(layer) -> dict | None:
    """The detector description our detection widget stored on a layer, if any."""
    return (layer.metadata or {}).get(METADATA_KEY, {}).get("detector") if layer is not None else None


DOCK_MAX_WIDTH = 560


def wrapping_label() -> Label:
    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setAlignment(Qt.AlignmentFlag.AlignLeft)
    return label


def container(*widgets, layout: str = "horizontal", labels: bool = False) -> Container:
    return Container(widgets=list(widgets), layout=layout, labels=labels)
