"""What the server answers when it does not answer a prediction: each error carries its
HTTP status; the app turns it into ``{"error": message}`` and one log line."""

from __future__ import annotations

from e2vpt.errors import E2VPTError


class ServeError(E2VPTError):
    """An answer with ``status`` and this message as its JSON ``error``."""

    status = 400


class BadRequest(ServeError):
    """The request is malformed: a bad name, parameter, body or image (400)."""


class NotAllowed(ServeError):
    """A run folder the server may not load (403)."""

    status = 403


class TaskGone(ServeError):
    """No such task, or it was removed before the request's batch ran (404)."""

    status = 404


class TaskConflict(ServeError):
    """The task exists already, or the server holds ``max_tasks`` tasks (409)."""

    status = 409


class TooLarge(ServeError):
    """An upload over ``max_image_bytes`` or an image over ``max_image_pixels`` (413)."""

    status = 413


class UnsupportedType(ServeError):
    """A content type that carries no image (415)."""

    status = 415


class ModelFailed(ServeError):
    """The model raised, or produced non-finite outputs, for this request (500)."""

    status = 500


class ServerBusy(ServeError):
    """More requests are in flight or waiting than the limits allow (503)."""

    status = 503
