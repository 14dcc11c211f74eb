"""The partition command line's library: what ``scripts/plan.py`` plans and prints."""
