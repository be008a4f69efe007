"""Detections and how they are judged: per-frame records, matching, metrics, COCO."""
