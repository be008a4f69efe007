"""Progress of a frame-by-frame run as the text a user reads: frames done / total, time elapsed
and an estimate of the time left (from the frames done so far). No Qt."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class RunProgress:
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    first_frame_at: float | None = None

    def advance(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.done += 1

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left, from the pace after the first frame (which also pays for loading the
        detector); None until there is a pace to go by."""
        now = time.monotonic() if now is None else now
        if self.done == 0:
            return None
        if self.done == 1:
            pace = self.first_frame_at - self.started
        else:
            pace = (now - self.first_frame_at) / (self.done - 1)
        return pace * (self.total - self.done)

    def text(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = clock(now - self.started)
        if self.done == 0:
            return f"0 / {self.total} frames · {elapsed} · loading the detector and running the first frame…"
        left = self.remaining(now)
        return f"{self.done} / {self.total} frames · {elapsed} elapsed · about {clock(left)} left"
