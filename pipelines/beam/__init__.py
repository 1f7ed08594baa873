"""Beam plumbing shared by the jobs: runner choice, live progress, FileSystems reads and writes."""
