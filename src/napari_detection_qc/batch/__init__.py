"""The command line: stores of detections, runs over many inputs (serial or Dask), and the argument parser."""
