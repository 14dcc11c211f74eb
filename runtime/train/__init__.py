"""Training, the main job: configuration, trainer, checkpoints, datasets, profiling and step measurement."""
