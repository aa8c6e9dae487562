"""Errors that the CLI turns into one clear line and exit code 2 (bad input)."""


class HpoError(Exception):
    """Bad input from the user: a spec, a flag, a study name or a storage URL.

    The message is one line that names what is wrong; the CLI prints it without a traceback
    and exits with code 2.
    """


class SpecError(HpoError):
    """A study spec that does not parse or validate. The message names the file and key path."""


class StorageError(HpoError):
    """A storage URL that is malformed or a database that cannot be reached."""


class StudyNotFoundError(HpoError):
    """A study name that is not in the storage."""
