"""napari-detection-qc: predict detection quality (F1, precision, recall) of Mask R-CNN output
on electron micrographs without labels, following Li et al. (Digital Discovery, 2025)."""

__version__ = "0.2.0"
