"""Request and response bodies of the HTTP API."""

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from handler.audio.output import (
    FORMAT_DESCRIPTIONS,
    NORMALIZATION_DESCRIPTIONS,
    AudioFormat,
    AudioOutput,
    Normalization,
)
from handler.generation import DURATION_CEILING, MAX_SEED, MAX_TAKES, GenerationParams, random_seed

MAX_PROMPT_CHARS = 500

WHITESPACE = "".join(chr(code) for code in range(0x110000) if chr(code).isspace())
"""What `str.strip` removes: the prompt must hold something else."""

NOT_BLANK = "[^" + "".join(f"\\u{ord(char):04x}" for char in WHITESPACE) + "]"
"""The documented pattern of a prompt: a character that is not whitespace to Python (spelled out,
as regex engines disagree on what `\\s` is). `_stripped` enforces it with a clearer message."""


def _stripped(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        raise ValueError("must not be blank")
    return stripped


Prompt = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PROMPT_CHARS, json_schema_extra={"pattern": NOT_BLANK}),
    AfterValidator(_stripped),
]
"""The prompt as sent (at most MAX_PROMPT_CHARS, not blank), used without its surrounding whitespace."""


def _integral_float_as_int(value: Any) -> Any:
    """14.0 as 14: JSON Schema's `integer` includes integral numbers written with a fraction."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Duration = Annotated[int, Field(ge=1, le=DURATION_CEILING, strict=True), BeforeValidator(_integral_float_as_int)]
"""Whole seconds: 14 and 14.0, not 14.5, "14" or true (strict otherwise). The validator comes after
the constraints so that the JSON schema keeps `minimum`/`maximum`. The deployment's own limit
(`MAX_DURATION`, 30 by default) is checked by the route and is the maximum its document shows."""

Takes = Annotated[int, Field(ge=1, le=MAX_TAKES, strict=True), BeforeValidator(_integral_float_as_int)]
"""How many clips of one request, taken like Duration."""

Seed = Annotated[int, Field(ge=0, le=MAX_SEED, strict=True), BeforeValidator(_integral_float_as_int)]
"""An unsigned 32-bit seed, taken like Duration."""


def _choices(descriptions: dict[Any, str]) -> str:
    return "; ".join(f"`{choice.value}`: {text}" for choice, text in descriptions.items())


class GenerateRequest(BaseModel):
    """POST /generate/ body."""

    model_config = ConfigDict(extra="forbid")

    text: Prompt = Field(description="Description of the desired music.")
    duration: Duration = Field(default=10, description="Length in seconds.")
    guidance_scale: float = Field(
        default=3.0,
        ge=0,
        le=10,
        strict=True,
        description="Text adherence; 1 or less turns classifier-free guidance off.",
    )
    temperature: float = Field(default=1.0, ge=0, le=2, strict=True, description="Randomness; 0 means greedy decoding.")
    seed: Seed | None = Field(default=None, description="Same seed and request give the same audio.")
    format: AudioFormat = Field(default=AudioFormat.WAV, description=f"File format. {_choices(FORMAT_DESCRIPTIONS)}.")
    normalize: Normalization = Field(
        default=Normalization.LOUDNESS, description=f"Level of the audio. {_choices(NORMALIZATION_DESCRIPTIONS)}."
    )
    takes: Takes = Field(
        default=1,
        description=(
            "How many clips to make of this request, in one batch: take j (from 0) has seed `seed + j`, and each"
            " is stored as its own file. The response's first-take fields are take 0's; `takes` lists them all."
        ),
    )

    def to_params(self) -> GenerationParams:
        """The generation this body asks for; a random seed when it names none."""
        return GenerationParams(
            prompt=self.text,
            duration=self.duration,
            guidance_scale=self.guidance_scale,
            temperature=self.temperature,
            seed=self.seed if self.seed is not None else random_seed(),
            takes=self.takes,
        )

    def to_output(self) -> AudioOutput:
        """The file this body asks for: its format and normalisation."""
        return AudioOutput(format=self.format, normalize=self.normalize)


def request_fields(params: GenerationParams, output: AudioOutput) -> dict[str, Any]:
    """`params` and `output` under the request body's names (the prompt as `text`), as a job's status
    repeats them; how many takes, its `takes` list says."""
    fields = asdict(params) | asdict(output)
    fields["text"] = fields.pop("prompt")
    del fields["takes"]
    return fields


class Take(BaseModel):
    """One clip of a request: its file and seed."""

    file_url: str
    filename: str
    seed: int = Field(description="This take's seed: the request's seed plus its place, from 0")


class GenerateResponse(BaseModel):
    """POST /generate/ result."""

    file_url: str
    duration: int
    timestamp: str
    prompt: str
    seed: int
    filename: str
    sample_rate: int
    format: AudioFormat
    normalize: Normalization
    content_type: str = Field(description="The download's Content-Type")
    loudness_lufs: float | None = Field(
        description="Integrated loudness reached (ITU-R BS.1770); null where it can't be measured (silence)"
    )
    takes: list[Take] = Field(description="Every take, the first one first (the fields above are its own)")


class JobAccepted(BaseModel):
    """202 body: the job to poll and where its files will be."""

    job_id: str
    status: str
    status_url: str
    file_url: str
    eta_seconds: float | None
    takes: list[Take] = Field(description="Where each take will be, the first one first")


class JobResponse(BaseModel):
    """GET /jobs/{job_id} result, with the request's parameters."""

    job_id: str
    status: str = Field(description="queued, running, succeeded or failed")
    progress: float = Field(ge=0, le=1)
    eta_seconds: float | None
    created_at: datetime
    updated_at: datetime
    status_url: str
    file_url: str | None = Field(description="Set once the job has succeeded")
    error: str | None = Field(description="Set when the job has failed")
    text: str
    duration: int
    guidance_scale: float
    temperature: float
    seed: int
    format: AudioFormat
    normalize: Normalization
    takes: list[Take] | None = Field(description="Every take, the first one first; set once the job has succeeded")


class FileInfo(BaseModel):
    """One entry of GET /files/ and GET /files/{filename}/info: the file, and what its sidecar knows.

    Files stored before sidecars kept these (or whose sidecar is lost) list with nulls.
    """

    filename: str
    url: str
    created_at: str
    size_kb: float
    format: AudioFormat = Field(description="From the file name's extension")
    content_type: str = Field(description="The download's Content-Type")
    prompt: str | None = None
    duration: float | None = Field(default=None, description="Length in seconds")
    seed: int | None = None
    guidance_scale: float | None = None
    temperature: float | None = None
    normalize: Normalization | None = None
    loudness_lufs: float | None = Field(default=None, description="Integrated loudness reached (ITU-R BS.1770)")


class ServedModel(BaseModel):
    """Which model serves, once loaded: its precision and where it came from."""

    precision: str = Field(description="int8, int4, bf16 or fp32")
    origin: str = Field(
        description=(
            "'beside the model' (an artifact baked with it, as in the image), 'cache' (baked at an"
            " earlier first start), 'baked' (baked at this start), 'converted' (converted at this start and kept"
            " nowhere: fp32, bf16, or a cache that can't be written)"
        )
    )
    artifact: str | None = Field(description="The artifact's directory name, if any")
    kernels: str | None = Field(
        default=None,
        description=(
            "The native kernels' build running each decode step (avx512vnni, avxvnni, avx2, neon, plain: the best"
            " this CPU runs unless NATIVE_KERNELS names one), null where torch runs it (fp32, bf16)"
        ),
    )
    audio_decoder_dtype: str = Field(
        default="float32",
        description="What EnCodec's decoder computes in: bfloat16 where the CPU has bf16 dot products, else float32",
    )


class Health(BaseModel):
    """GET / result."""

    status: str
    model: str
    device: str
    version: str
    model_id: str
    model_loaded: bool
    model_error: str | None
    model_retry_in_seconds: float | None = Field(
        default=None, description="After a failed load: seconds until it is tried again (requests meanwhile get 503)"
    )
    served_model: ServedModel | None = None
    storage: str
    auth: Literal["none", "api_key"] = Field(
        default="none",
        description="'api_key': every request but this one, the docs and the page needs `Authorization: Bearer <key>`",
    )


class ErrorDetail(BaseModel):
    """One invalid field."""

    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx body."""

    detail: str
    errors: list[ErrorDetail] | None = None
