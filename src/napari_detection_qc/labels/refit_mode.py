"""What a forest refit does with the user's labeled frames (light to import: the viewer builds its
choices from it before scikit-learn is loaded)."""

from enum import Enum


class RefitMode(Enum):
    ADD = "add to the forest's training data"
    REPLACE = "replace it with my frames only"


MIN_FRAMES_TO_REPLACE = 5


def refit_problem(mode: RefitMode, n_labeled: int) -> str | None:
    """Why a refit with this many labeled frames cannot run, or None."""
    if mode is RefitMode.REPLACE and n_labeled < MIN_FRAMES_TO_REPLACE:
        return f"replacing the training data needs at least {MIN_FRAMES_TO_REPLACE} labeled frames; you have {n_labeled}"
    return None
