"""Exceptions raised by tfseg, so that callers can tell bad input from bugs."""


class DataError(ValueError):
    """Bad input data: an unreadable file, a mask that does not fit its image, a bad label.

    The message always names the file (or split) and the offending value.
    """

    # AutoGraph turns exception types it does not know into a StagingError when they are raised
    # while tracing (e.g. inside model.fit); this makes it let ours through unchanged.
    ag_pass_through = True


class ConfigError(ValueError):
    """Arguments that do not fit together, e.g. a model whose class count differs from the data's."""

    ag_pass_through = True
