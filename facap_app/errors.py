"""The app's error: a start-up problem the user can fix, printed as one `error:` line (exit code 2)."""

from __future__ import annotations

from facap_dataset.errors import DataError
from facap_io.errors import FacapError
from facap_retrieval.ranking import RetrievalError


class AppError(FacapError):
    """Bad model, dataset, config, index or option; the message names the culprit."""


# What start-up reports as one line instead of a traceback: ours and the errors of the packages the app drives.
USER_ERRORS = (FacapError, DataError, RetrievalError)
