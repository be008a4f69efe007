"""What fine-tuning a detector reads and writes, and the forest fitted for the new detector."""
