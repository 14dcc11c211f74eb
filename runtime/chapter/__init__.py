"""The chapter's five exercises, each answered with figures computed on the spot (``scripts/chapter.py``)."""
