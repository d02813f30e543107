"""Making one music file: generate, encode, store, keep the newest. Shared by requests and jobs."""

import logging
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from handler.audio.encoding import EncodedAudio, encode
from handler.audio.output import AudioOutput
from handler.dependencies import Services
from handler.generation import GenerationParams
from handler.job_records import JobStore
from handler.musicgen.generator import GenerationFailedError, ModelUnavailableError, ProgressCallback
from handler.observability.metrics import record_audio_stored
from handler.observability.traces import Stage, span
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
    filenames: Sequence[str],
    requested_at: datetime,
    on_progress: ProgressCallback | None = None,
) -> list[EncodedAudio]:
    """Generate `params` into `filenames` (one per take), encoded as `output` asks, then delete the
    files saved before the last `max_files` (`prune`); each take counts as one file.

    Raises MusicFileError (503 model or storage unavailable, 500 generation failed); on any
    failure nothing is stored: takes saved before a failed save are deleted again.
    """
    if len(filenames) != params.takes:
        raise ValueError(f"{params.takes} takes need as many file names, {len(filenames)} given")
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
        with span(Stage.ENCODE):
            encoded = [encode(take, generator.sample_rate, output) for take in samples]
    except Exception as exc:
        logger.exception("encoding failed")
        raise MusicFileError(500, "Music generation failed") from exc
    saved: list[str] = []
    try:
        with span(Stage.STORE):
            for take, (filename, audio, seed) in enumerate(zip(filenames, encoded, params.seeds, strict=True)):
                metadata = {
                    **asdict(params),
                    **asdict(output),
                    # The take's own seed; `take` and `takes` say where it stands among its request's.
                    "seed": seed,
                    "take": take,
                    "loudness_lufs": None if audio.loudness_lufs is None else round(audio.loudness_lufs, 2),
                    "seconds": audio.seconds,
                    "model_id": services.settings.model_id,
                    "sample_rate": generator.sample_rate,
                    "created_at": requested_at.isoformat(),
                }
                services.storage.save(filename, audio.data, metadata)
                saved.append(filename)
    except StorageError as exc:
        logger.exception("storage write failed")
        _delete_quietly(services, saved)
        raise MusicFileError(503, "Storage unavailable") from exc
    record_audio_stored(sum(audio.seconds for audio in encoded), output.format.value)
    try:
        pruned = prune(services.storage, services.settings.max_files)
        JobStore(services.storage).prune(services.settings.max_files, pruned)
    except Exception:
        # The new files are safe; the next save prunes again.
        logger.exception("pruning old files failed")
    return encoded


def _delete_quietly(services: Services, filenames: list[str]) -> None:
    """Delete the takes a failed request had saved: none of its files is kept (or counted) without the rest."""
    if not filenames:
        return
    try:
        services.storage.delete(filenames)
    except StorageError:
        logger.exception("could not delete the takes saved before a failure", extra={"files": filenames})
