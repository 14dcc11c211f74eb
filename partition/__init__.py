"""Planning side of pipegraph: the chapter's model, its graph, costs, memory and partitions."""
