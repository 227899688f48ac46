"""Problems a request or a command can have, each with the HTTP status it is answered with."""

from __future__ import annotations


class ServeError(Exception):
    """Answered as {"error": message} with `status`; the predict command prints the message."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(ServeError):
    status = 422  # readable, but not inputs the model can take (shape, NaN, range, not an image)


class NotFound(ServeError):
    status = 404  # no such experiment, job, variant or file (or a name that may not be asked for)


class NotServable(ServeError):
    status = 409  # the run exists but cannot answer (not finished, no weights, damaged weights)


class TooLarge(ServeError):
    status = 413


class UnsupportedMedia(ServeError):
    status = 415
