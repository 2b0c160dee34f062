"""ranksearch's own errors: bad input or an unusable state, said in one line that names the value and the fix.

Every error ranksearch raises on purpose is a :class:`RankSearchError` (a ``ValueError``, so code that
caught ``ValueError`` keeps working). The CLI turns exactly these, and file-system errors, into one line
on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "NoSuchStudy", "RankSearchError", "SpaceError", "StorageError", "StudyError"]


class RankSearchError(ValueError):
    """Bad input or an unusable state (the message names the value and what to do)."""


class ConfigError(RankSearchError):
    """A rank config, settings or weights file that cannot be used for this model."""


class SpaceError(RankSearchError):
    """A space file, or a model or task factory, that cannot be used."""


class StorageError(RankSearchError):
    """An Optuna storage or artifact folder that cannot be opened or used."""


class StudyError(RankSearchError):
    """A study that cannot be created, joined, resumed or exported as asked."""


class NoSuchStudy(StudyError):
    """The study (or the journal file that would hold it) is not there (yet: a worker may wait for it)."""
