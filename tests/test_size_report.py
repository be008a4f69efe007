"""The per-frame object size report: which frames of a stack look mis-sized."""

from napari_detection_qc.size_report import describe_sizes, outlier_warning, size_outliers, stack_size


def test_a_frame_sized_far_from_the_stack_median_is_an_outlier():
    sizes = {0: 20.0, 1: 24.0, 2: 22.0, 3: 90.0, 4: 6.0, 5: 21.0}
    assert size_outliers(sizes) == [3, 4]
    assert size_outliers(sizes, ratio=5.0) == []


def test_no_outliers_without_enough_sized_frames():
    assert size_outliers({0: 10.0, 1: 100.0}) == []
    assert size_outliers({0: 10.0, 1: 100.0, 2: None, 3: float("nan")}) == []
    assert outlier_warning({0: 10.0}) is None


def test_the_warning_names_frames_sizes_and_median():
    text = outlier_warning({0: 20.0, 1: 22.0, 2: 24.0, 7: 120.0})
    assert "7 (120 px)" in text and "median object size (23 px)" in text and "by hand" in text


def test_the_summary_says_how_frames_were_sized():
    assert describe_sizes({0: 24.4}, None) == "object size auto: 24 px"
    assert describe_sizes({0: 20.0, 1: 30.0, 2: None}, None) == "object size auto: median 25 px (20-30)"
    assert "nothing to size" in describe_sizes({0: None}, None)
    assert describe_sizes({0: 24.0}, 24.0) == "object size 24 px (set by hand)"
    assert describe_sizes({0: 23.0}, 23.04, "the stack's") == "object size 23 px (the stack's)"


def test_the_stack_size_leaves_the_outliers_out():
    assert stack_size({0: 20.0, 1: 24.0, 2: 22.0, 3: 90.0, 4: None}) == 22.0
    assert stack_size({0: None}) is None
