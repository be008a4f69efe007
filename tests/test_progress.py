from napari_detection_qc.progress import RunProgress, clock


def test_progress_text_counts_frames_and_estimates_time_left():
    progress = RunProgress(total=20, started=0.0)
    assert progress.text(now=0.5).startswith("0 / 20 frames")
    progress.advance(now=10.0)  # first frame: loading + one frame
    assert progress.remaining(now=10.0) == 190.0
    progress.advance(now=12.0)
    progress.advance(now=14.0)
    assert progress.remaining(now=14.0) == 34.0  # 2 s per frame after the first, 17 left
    assert progress.text(now=14.0) == "3 / 20 frames · 0:14 elapsed · about 0:34 left"
    assert clock(3725) == "1:02:05"
