"""The evaluation's typed error; the command line prints it (and every other FacapError) as one line."""

from facap_io.errors import FacapError


class EvalError(FacapError):
    """Bad evaluation input that is not a data problem: an unusable model, conflicting options, an output
    place that cannot be written, processes that disagree about their data."""
