"""Pieces the steps share: layer pickers that choose the obvious layer, a one-line status that
never grows the dock, titled sections, the per-viewer session (forest in use, the layers a
detection just made), the owner of a step's background work, and turning our layers back into
detections.

napari hands a plugin's widgets a ``PublicOnlyProxy`` of the viewer whose look-ups return a new
proxy object each time; every step works on the objects behind the proxies (``unproxied``), so a
layer has one identity however it was reached."""

from __future__ import annotations

import atexit
import weakref
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from magicgui.widgets import ComboBox, Container
from magicgui.widgets.bases import Widget
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtCore import QCoreApplication, QObject, Qt, QThreadPool, QTimer
from qtpy.QtWidgets import QGroupBox, QLabel, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from napari_detection_qc.detections.records import StackDetections
from napari_detection_qc.io.layer_pair import pair_problem, pair_record

if TYPE_CHECKING:
    from napari_detection_qc.quality.forest import QualityForest

DOCK_MAX_WIDTH = 560
QUIT_WAIT_MS = 60_000  # at quit, cancelled work gets this long to reach its next step and stop


def unproxied(obj):
    """The napari object behind any ``PublicOnlyProxy`` layers (a proxy is made anew on every
    look-up, so its ``id`` and identity change; the object's do not)."""
    while hasattr(type(obj), "__wrapped__"):
        obj = obj.__wrapped__
    return obj


class LayerPicker(ComboBox):
    """A combo box of the viewer's layers of one type, kept current as layers come, go and are
    renamed. While nothing is chosen it takes the obvious layer: the last one ``prefer`` accepts,
    else (with ``only_fallback``) the only layer of its type."""

    def __init__(
        self,
        viewer,
        layer_type,
        label: str,
        prefer: Callable[[Any], bool] | None = None,
        only_fallback: bool = True,
        **kwargs,
    ):
        self._viewer = viewer = unproxied(viewer)
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
        self._detecting: dict[int, Any] = {}  # the layers a running detection writes, by id
        self.results = None

    def set_forest(self, forest: QualityForest, source: str) -> None:
        self.forest, self.source = forest, source
        self.forest_changed.emit(forest)

    def start_detecting(self, *layers) -> None:
        """These layers are being written by a detection: nothing reads them until it finishes."""
        self._detecting.update({id(layer): layer for layer in map(unproxied, layers)})

    def stop_detecting(self, *layers) -> None:
        for layer in map(unproxied, layers):
            self._detecting.pop(id(layer), None)

    def is_busy(self, *layers) -> bool:
        """Whether a running detection writes any of these layers (proxies or not)."""
        return any(id(unproxied(layer)) in self._detecting for layer in layers if layer is not None)


_sessions: weakref.WeakKeyDictionary[Any, ViewerSession] = weakref.WeakKeyDictionary()


def viewer_session(viewer) -> ViewerSession:
    """One ViewerSession per viewer, shared by that viewer's steps (in one dock or in several,
    each of which napari hands its own proxy of the viewer)."""
    viewer = unproxied(viewer)
    if viewer not in _sessions:
        _sessions[viewer] = ViewerSession()
    return _sessions[viewer]


class BackgroundWork(QObject):
    """Owns a widget's background workers, timers and connections to events that outlive it (a
    child of the widget, so it is deleted with it). When the widget goes (its dock or the viewer
    closed) every running worker is asked to stop (``quit`` at its next yield, plus the ``cancel``
    given with it), timers stop, and no handler runs any more: nothing touches a deleted widget."""

    def __init__(self, widget: QWidget):
        super().__init__(widget)
        _wait_for_workers_at_quit()
        self.closed = False
        self._running: dict[int, tuple[Any, Callable[[], None] | None]] = {}
        self._listening: list[tuple[Any, Callable, Callable]] = []
        self.destroyed.connect(_close_work(self._running, self._listening, self))

    def listen(self, emitter, handler: Callable) -> None:
        """Connect a viewer, layer or session event (napari or psygnal) that outlives the widget:
        the handler runs while the widget lives and is disconnected when it goes."""
        guarded = self.guarded(handler)
        emitter.connect(guarded)
        self._listening.append((emitter, handler, guarded))

    def forget(self, emitter, handler: Callable) -> None:
        """Undo ``listen(emitter, handler)``."""
        for entry in [e for e in self._listening if e[0] is emitter and e[1] == handler]:
            self._listening.remove(entry)
            emitter.disconnect(entry[2])

    def timer(self, interval_ms: int, callback: Callable[[], None], single_shot: bool = False) -> QTimer:
        """A timer owned by the widget, stopped when it goes."""
        timer = QTimer(self)
        timer.setInterval(interval_ms)
        timer.setSingleShot(single_shot)
        timer.timeout.connect(callback)
        return timer

    def run(
        self, function: Callable, *args, cancel: Callable[[], None] | None = None, **handlers: Callable
    ) -> Any:
        """Run ``function(*args)`` in a napari thread worker; ``handlers`` by signal name (yielded,
        returned, errored, finished) run only while the widget lives. Errors go to ``errored``
        (nowhere without one). ``cancel``: what stops the work besides ``quit`` (for functions
        that do not yield). Returns the started worker."""
        from napari.qt.threading import create_worker

        worker = create_worker(function, *args, _ignore_errors=True)
        key = id(worker)
        self._running[key] = (worker, cancel)
        for signal_name, handler in handlers.items():
            getattr(worker, signal_name).connect(self.guarded(handler))
        worker.finished.connect(lambda: self._running.pop(key, None))
        worker.start()
        return worker

    def guarded(self, handler: Callable) -> Callable:
        """``handler``, run only while the widget lives."""

        def run(*args):
            if not self.closed:
                handler(*args)

        return run


def _wait_for_workers_at_quit() -> None:
    """Once per process: when the application quits (or the interpreter exits without an event
    loop), wait for the background threads, which their widgets' closing has cancelled, so none
    is cut off mid-step by the interpreter's shutdown."""
    global _waiting_at_quit
    if _waiting_at_quit:
        return
    _waiting_at_quit = True
    app = QCoreApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(_wait_for_workers)
    atexit.register(_wait_for_workers)


_waiting_at_quit = False


def _wait_for_workers() -> None:
    with suppress(RuntimeError):  # Qt already torn down
        QThreadPool.globalInstance().waitForDone(QUIT_WAIT_MS)


def _close_work(running: dict, listening: list, owner: BackgroundWork) -> Callable[[], None]:
    """What runs as the owner is destroyed: it holds no reference to Qt objects being deleted."""

    def close(*_args) -> None:
        owner.closed = True
        for worker, cancel in list(running.values()):
            if cancel is not None:
                cancel()
            with suppress(RuntimeError):  # its Qt side already gone
                worker.quit()
        running.clear()
        for emitter, _handler, guarded in listening:
            with suppress(RuntimeError, TypeError, ValueError):  # already gone with its layer
                emitter.disconnect(guarded)
        listening.clear()

    return close


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
        self.viewer = unproxied(napari_viewer)
        self.session = viewer_session(self.viewer)
        self.work = BackgroundWork(self)
        from napari_detection_qc.widgets.warm_up import warm_up

        warm_up(self)
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


def device_picker(step: Step) -> ComboBox:
    """A device combo box: ``auto`` and ``cpu`` at once, then every device torch sees (``cuda:N``
    with its name, ``mps``) and the torch build as its tooltip, once torch is imported in the
    background."""
    from napari_detection_qc.widgets.warm_up import WARM_UP_DELAY_MS, device_choices

    picker = ComboBox(
        label="device",
        choices=[("auto", "auto"), ("cpu", "cpu")],
        value="auto",
        tooltip="finding the devices torch sees…",
    )

    def fill(found: tuple[list[tuple[str, str]], str]) -> None:
        choices, build = found
        chosen = picker.value
        picker.native.clear()  # magicgui keeps items it already has in place: rebuild in this order
        picker.choices = choices
        picker.value = chosen if chosen in [value for _, value in choices] else "auto"
        picker.tooltip = build

    QTimer.singleShot(
        WARM_UP_DELAY_MS, lambda: step.work.closed or step.work.run(device_choices, returned=fill)
    )
    return picker


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
        raise ValueError(
            f"the Shapes layer '{boxes.name}' has no 'score' feature; it must hold detection scores"
        )
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
