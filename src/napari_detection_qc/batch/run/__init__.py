"""Running the batch pipeline: detection over the store on serial or Dask executors, scoring and
evaluation of stores, and the demo. The CLI is a thin layer over these functions."""
