"""Errors a user can fix: the scripts print their message as one line and exit non-zero."""


class UserError(Exception):
    """Base class: bad input, a bad file or a bad setting, never a bug of ours."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class DatasetError(UserError):
    """A dataset folder or annotation file that cannot be used."""


class ImageReadError(UserError):
    """An image file that is missing or cannot be decoded."""


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the message names the iteration and the images."""
