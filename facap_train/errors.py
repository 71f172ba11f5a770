"""The trainer's typed errors; each message names the culprit, and the command line prints it as one line."""

from __future__ import annotations

from facap_io.errors import FacapError


class TrainingError(FacapError):
    """A bad option combination or a run that cannot go on."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; raised before the offending step touches the weights."""


class CheckpointError(FacapError):
    """A resume path that holds no checkpoint, a checkpoint that does not verify, or one that does not fit the run."""
