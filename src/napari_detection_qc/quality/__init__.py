"""Predicted detection quality: features, detector signals, the quality forest, scoring, explanations and the numbers reported from them."""
