"""The one error type that means "the input is wrong or a check failed" (CLI exit code 2)."""


class InputError(ValueError):
    """Bad input or a failed check; the message names the file, column or value at fault."""


class ValidationFailed(InputError):
    """A batch failed its expectation suite and was quarantined."""

    def __init__(self, message: str, quarantine_path: str | None = None):
        super().__init__(message)
        self.quarantine_path = quarantine_path


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none)."""
    return next(iter(str(exc).strip().splitlines()), "")
