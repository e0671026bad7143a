"""The training error tree: every failure a job reports to its caller."""

from __future__ import annotations

from http import HTTPStatus


class TrainingError(Exception):
    """Base class: a training job could not run or publish."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR


class DatasetError(TrainingError):
    """The input data is missing, unreadable or unusable for the requested job."""

    status = HTTPStatus.BAD_REQUEST


class ExportError(TrainingError):
    """The trained model could not be exported in the serving format."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
