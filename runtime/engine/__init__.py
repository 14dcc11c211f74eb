"""Execution of a schedule: stages, the direct engine, the executor and the pipeline that ties them together."""
