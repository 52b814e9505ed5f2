"""One error hierarchy for FusionEdge, ordered by who must act.

``FusionEdgeError``
  ``BundleError``      the bundle on disk is wrong (schema, hashes, missing files): re-export or re-download
  ``BackendError``     an inference backend cannot load or run: install it, pick another, check the device
    ``NonFiniteOutputError``  the model computed NaN/Inf: the model (or its backend) is broken
  ``InputError``       what the caller passed is wrong (shape, dtype, NaN, unreadable media)
    ``MediaError``     a video or audio file cannot be decoded
  ``DataError``        a data-set manifest is wrong; names the line and field
  ``SensorError``      a live sensor cannot be opened or stopped delivering
  ``UpdateError``      a fleet update failed (``DownloadError``, ``VerificationError``)

Foreign exceptions are wrapped at the seam with ``raise ... from e``. The CLI prints the message of
any ``FusionEdgeError`` on one line and exits with status 2; anything else is a bug and shows a traceback.
"""

from __future__ import annotations

__all__ = [
    "FusionEdgeError",
    "BundleError",
    "BackendError",
    "NonFiniteOutputError",
    "InputError",
    "MediaError",
    "DataError",
    "SensorError",
    "UpdateError",
    "DownloadError",
    "VerificationError",
]


class FusionEdgeError(Exception):
    """Base of every error FusionEdge raises on purpose."""


class BundleError(FusionEdgeError):
    """A bundle is malformed, incomplete or altered. The message names the file and the field."""


class BackendError(FusionEdgeError):
    """An inference backend is unavailable, failed to load the model, or failed to run it."""


class NonFiniteOutputError(BackendError):
    """The model returned NaN or Inf in an output (named): no answer can be made from it."""


class InputError(FusionEdgeError, ValueError):
    """An input has the wrong name, shape or dtype, or holds NaN/Inf."""


class MediaError(InputError):
    """A media file (video, audio, image) is missing, truncated or not what its name says."""


class DataError(FusionEdgeError, ValueError):
    """A data-set manifest is invalid. The message names the file, the line and the field."""


class SensorError(FusionEdgeError):
    """A sensor (camera, microphone, stream) cannot be opened or stopped delivering."""


class UpdateError(FusionEdgeError):
    """A model update failed; the model in use is untouched."""


class DownloadError(UpdateError):
    """Downloading an update failed (network, size, disk)."""


class VerificationError(UpdateError):
    """An update failed verification (signatures, hashes, freshness, compatibility)."""
