"""The root of the error hierarchy. Each package derives its own typed error from `FacapError` (`DataError`,
`RetrievalError`, `EvalError`, `TrainingError`, `CheckpointError`, `AppError`, ...), so a command line can
print any of them as one line and a caller can still catch one kind precisely."""


class FacapError(ValueError):
    """Bad input or state that the user can fix; the message names the culprit."""


class UnsafePathError(FacapError):
    """A path that would leave the folder it must stay in (an image root, an output folder)."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty): what a one-line report
    shows of a library's multi-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
