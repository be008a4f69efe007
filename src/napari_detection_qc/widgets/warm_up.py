"""What the docks do in the background as the first one opens, once per process: import the
detection engines (torch), load the bundled forest, and let napari and vispy build what they build
the first time a process draws Labels and Shapes; so neither the first Detect nor the first
prediction waits for them on the UI thread."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from napari_detection_qc.quality.forest_choice import load_forest
from napari_detection_qc.widgets._torch_import import import_engines

WARM_UP_DELAY_MS = 300  # after the dock is painted: the work would otherwise share the interpreter with it

_started = False


def warm_up(step) -> None:
    """Start the warm-up in ``step``'s background work, once per process."""
    global _started
    if _started:
        return
    _started = True
    QTimer.singleShot(WARM_UP_DELAY_MS, lambda: step.work.closed or step.work.run(_warm_up_job))


def _warm_up_job() -> None:
    warm_napari_layers()
    load_forest("default")
    import_engines()


def device_choices() -> tuple[list[tuple[str, str]], str]:
    """Worker body: the devices torch sees as (label, value) choices (``auto`` first, with what it
    picks) and one line on the torch build; imports torch, so never on the UI thread."""
    import_engines()
    from napari_detection_qc.engines.devices import available_devices, torch_build_description

    return [(choice.label, choice.value) for choice in available_devices()], torch_build_description()


def warm_napari_layers() -> None:
    """napari compiles (or loads from its cache) the numba code of Shapes and Labels, and vispy
    computes the dash patterns of its line visuals (cached per process), the first time a process
    draws them: over a second on the UI thread at the first Detect. Doing it once here, on a
    throw-away layer, moves that off the UI thread. napari and vispy internals may change: any
    failure only leaves the cost where it was."""
    try:
        from napari.layers import Labels, Shapes
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
        Shapes([np.array([[0, 0], [0, 4], [4, 4], [4, 0]], float)], shape_type="rectangle", edge_width=2)
        Labels(np.arange(64, dtype=np.uint16).reshape(8, 8)).refresh()
    except Exception:  # noqa: BLE001 (a warm-up must never fail the dock)
        pass
