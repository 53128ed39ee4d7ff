"""The twotower-export job: a trained and indexed workdir -> a serving export directory.

The job is ``twotower.export.export`` (that module also builds the query SavedModel, which
belongs to the job alone); it is named here so that every workdir-level job has one home.
"""
from twotower.export import export

__all__ = ["export"]
