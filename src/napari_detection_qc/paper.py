"""The seed paper's detector and matching settings (Li et al. 2025), in a module without imports so
that the CLI shows them in its help without loading torch, pandas or scipy."""

DEFAULT_SCORE_THRESHOLD = 0.1  # detections kept from this score up, as the forests were trained
DEFAULT_MAX_DETECTIONS = 5000
"""Per frame. The paper keeps up to 1000 per image, which its detectron2 config reaches anyway
(1000 proposals); a tiled 4096 px frame of small cavities holds thousands (1000 cut a held-out
2000-cavity frame's F1 from 0.99 to 0.67)."""
PAPER_IOU_THRESHOLD = 0.1  # box IoU from which a prediction matches a ground-truth object
