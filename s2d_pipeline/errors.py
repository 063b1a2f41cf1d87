"""User-facing errors: the CLI prints these as one clear message and exits non-zero."""


class S2DError(Exception):
    """An error caused by the user's input or environment (bad file, param, path), not a bug."""

    exit_code = 2


class ConfigError(S2DError):
    """params.yaml (or a profile) is invalid: unknown key, wrong type, missing path."""


class DataError(S2DError):
    """A data file is unreadable or breaks a validation rule; the message names file, row and rule."""


class BudgetError(S2DError):
    """The label budget cannot be spent as asked (too large, non-positive, double-spent)."""


class GateError(S2DError):
    """A pipeline gate stopped the run: going on would spend compute for nothing (the message says why
    and which param lets a user go on anyway)."""
