"""Making one music file: generate, encode, store, keep the newest. Shared by requests and jobs."""

import logging
from dataclasses import asdict
from datetime import datetime

from handler.audio.encoding import EncodedAudio, encode
from handler.audio.output import AudioOutput
from handler.dependencies import Services
from handler.generation import GenerationParams
from handler.job_records import JobStore
from handler.musicgen.generator import GenerationFailedError, ModelUnavailableError, ProgressCallback
from handler.storage import StorageError, prune

logger = logging.getLogger(__name__)


class MusicFileError(RuntimeError):
    """Making the file failed; `status_code` and the message are safe to show to clients."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def make_music_file(
    services: Services,
    params: GenerationParams,
    output: AudioOutput,
    filename: str,
    requested_at: datetime,
    on_progress: ProgressCallback | None = None,
) -> EncodedAudio:
    """Generate `params` into `filename`, encoded as `output` asks, then delete the oldest files beyond the cap.

    Raises MusicFileError (503 model or storage unavailable, 500 generation failed); on any
    failure nothing is stored.
    """
    generator = services.generator
    try:
        samples = generator.generate(params, on_progress)
    except ModelUnavailableError as exc:
        raise MusicFileError(503, f"Model unavailable: {exc}") from exc
    except GenerationFailedError as exc:
        logger.error("generation failed: %s", exc)
        raise MusicFileError(500, "Music generation failed") from exc
    except Exception as exc:
        logger.exception("generation failed")
        raise MusicFileError(500, "Music generation failed") from exc
    try:
        encoded = encode(samples, generator.sample_rate, output)
    except Exception as exc:
        logger.exception("encoding failed")
        raise MusicFileError(500, "Music generation failed") from exc
    metadata = {
        **asdict(params),
        **asdict(output),
        "loudness_lufs": None if encoded.loudness_lufs is None else round(encoded.loudness_lufs, 2),
        "seconds": encoded.seconds,
        "model_id": services.settings.model_id,
        "sample_rate": generator.sample_rate,
        "created_at": requested_at.isoformat(),
    }
    try:
        services.storage.save(filename, encoded.data, metadata)
    except StorageError as exc:
        logger.exception("storage write failed")
        raise MusicFileError(503, "Storage unavailable") from exc
    try:
        pruned = prune(services.storage, services.settings.max_files, protect=filename)
        JobStore(services.storage).prune(services.settings.max_files, pruned)
    except Exception:
        # The new file is safe; the next save prunes again.
        logger.exception("pruning old files failed")
    return encoded
