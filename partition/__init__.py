"""Planning side of pipegraph (pure Python + numpy): the chapter's model, costs, memory, partitions and schedules."""
