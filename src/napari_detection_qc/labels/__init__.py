"""Ground truth from the user: its records, the training set of labelled frames, and refitting the forest."""
