"""Schedules as data and their simulator: actions, generators, transforms, comms insertion, validation, replay, traces."""
