"""The seed paper's detector and matching settings (Li et al. 2025), in a module without imports so
that the CLI shows them in its help without loading torch, pandas or scipy."""

DEFAULT_SCORE_THRESHOLD = 0.1  # detections kept from this score up, as the forests were trained
DEFAULT_MAX_DETECTIONS = 1000  # per image
PAPER_IOU_THRESHOLD = 0.1  # box IoU from which a prediction matches a ground-truth object
