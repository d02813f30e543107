"""Asynchronous generation jobs: local worker, Lambda self-invocation, deadlines, the 30 s budget."""

import importlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from botocore.stub import ANY, Stubber
from fastapi.testclient import TestClient

from handler.audio.output import AudioFormat, AudioOutput, Normalization
from handler.filenames import new_filename
from handler.generation import GenerationParams
from handler.job_records import (
    EXPIRED_ERROR,
    JOB_EVENT_KEY,
    JobRecord,
    JobStatus,
    JobStore,
    QueueFullError,
    job_event,
    job_id_from_event,
)
from handler.jobs import LocalJobQueue
from handler.musicgen.generator import MusicgenGenerator
from handler.routes import prefers_async
from handler.settings import Settings
from handler.storage import LocalStorage, Storage
from tests.support.api import download
from tests.support.app import serve
from tests.support.audio import decode
from tests.support.doubles import FailingGenerator, GatedGenerator, SlowGatedGenerator
from tests.support.jobs import WaitableJobQueue
from tests.support.lambda_events import LambdaContext, load_event
from tests.support.storage import START
from tests.support.wav import read_wav

ASYNC = {"Prefer": "respond-async"}
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


class RecordingStorage(LocalStorage):
    """Local storage that keeps every job record written, to watch progress."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.job_writes: list[dict[str, Any]] = []

    def put_job(self, job_id: str, record: Any) -> None:
        self.job_writes.append(dict(record))
        super().put_job(job_id, record)


def wait_for_jobs(client: TestClient) -> None:
    jobs = client.app.state.services.jobs  # type: ignore[attr-defined]
    assert isinstance(jobs, WaitableJobQueue)
    jobs.wait_until_idle()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("respond-async", True),
        ("Respond-Async", True),
        ("wait=10, respond-async", True),
        ("respond-async; foo=bar", True),
        ("return=minimal", False),
        ("respond-asynchronously", False),
        (None, False),
    ],
)
def test_prefer_header_parsing(header: str | None, expected: bool) -> None:
    assert prefers_async(header) is expected


def test_job_events_are_told_from_http_events() -> None:
    assert job_id_from_event(job_event("gen_20250528_134211_a1b2c3d4")) == "gen_20250528_134211_a1b2c3d4"
    assert job_id_from_event(load_event("generate")) is None
    assert job_id_from_event({JOB_EVENT_KEY: "x"}) is None


def test_async_job_runs_locally_to_success_with_rising_progress(
    settings: Settings, generator: MusicgenGenerator, tmp_path: Any
) -> None:
    storage = RecordingStorage(tmp_path / "generated")
    with serve(settings, storage, generator) as client:
        response = client.post(
            "/generate/", json={"text": "rain on a tin roof", "duration": 30, "seed": 9}, headers=ASYNC
        )
        assert response.status_code == 202
        body = response.json()
        job_id = body["job_id"]
        assert response.headers["location"] == body["status_url"] == f"/jobs/{job_id}"
        assert response.headers["preference-applied"] == "respond-async"
        assert int(response.headers["retry-after"]) >= 1
        assert body["status"] == "queued"
        assert body["file_url"] == f"/files/{job_id}.wav"
        wait_for_jobs(client)

        status = client.get(body["status_url"])
        assert status.status_code == 200
        job = status.json()
        assert job["status"] == "succeeded"
        assert job["progress"] == 1.0
        assert job["file_url"] == body["file_url"]
        assert job["error"] is None
        assert (job["text"], job["duration"], job["seed"]) == ("rain on a tin roof", 30, 9)
        assert "retry-after" not in status.headers

        wav = read_wav(client.get(body["file_url"]).content)
        assert (wav.sample_rate, len(wav.samples)) == (32000, 30 * 32000)

    progress = [write["progress"] for write in storage.job_writes]
    statuses = [write["status"] for write in storage.job_writes]
    assert statuses[0] == "queued"
    assert statuses[-1] == "succeeded"
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    assert any(0 < value < 1 for value in progress), "progress is written during generation"


@pytest.mark.parametrize("audio_format", ["flac", "mp3"])
def test_an_async_job_makes_the_format_and_normalisation_asked_for(client: TestClient, audio_format: str) -> None:
    body = client.post(
        "/generate/",
        json={"text": "rain", "duration": 2, "format": audio_format, "normalize": "none", "seed": 4},
        headers=ASYNC,
    ).json()
    assert body["file_url"] == f"/files/{body['job_id']}.{audio_format}"
    wait_for_jobs(client)
    job = client.get(body["status_url"]).json()
    assert (job["status"], job["format"], job["normalize"]) == ("succeeded", audio_format, "none")
    assert job["file_url"] == body["file_url"]
    decoded = decode(download(client, body["file_url"]))
    assert (decoded.sample_rate, len(decoded.samples)) == (32000, 2 * 32000)
    [listed] = client.get("/files/").json()
    assert (listed["format"], listed["normalize"], listed["seed"]) == (audio_format, "none", 4)


def test_running_job_reports_running_with_retry_after(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> None:
    gated = GatedGenerator(generator)
    with serve(settings, local_storage, gated) as client:
        body = client.post("/generate/", json={"text": "drums", "duration": 1}, headers=ASYNC).json()
        assert gated.started.wait(timeout=30)
        running = client.get(body["status_url"])
        assert running.json()["status"] == "running"
        assert running.json()["file_url"] is None
        assert int(running.headers["retry-after"]) >= 1
        gated.gate.set()
        wait_for_jobs(client)
        assert client.get(body["status_url"]).json()["status"] == "succeeded"


def test_failed_job_has_a_clear_error_and_no_file(
    settings: Settings, storage: Storage, generator: MusicgenGenerator
) -> None:
    with serve(settings, storage, FailingGenerator(generator)) as client:
        body = client.post("/generate/", json={"text": "drums", "duration": 1}, headers=ASYNC).json()
        wait_for_jobs(client)
        job = client.get(body["status_url"]).json()
        assert job["status"] == "failed"
        assert job["error"] == "Music generation failed"
        assert job["file_url"] is None
        assert client.get(body["file_url"]).status_code == 404
    assert storage.list_files() == []


@pytest.mark.parametrize(
    "job_id", ["gen_20250528_134211_a1b2c3d4", "nope", "..%2Fjobs", "gen_20250528_134211_a1b2c3d4.json"]
)
def test_unknown_or_malformed_job_is_404(client: TestClient, job_id: str) -> None:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 404
    assert response.json()["detail"] in {"Job not found", "Not Found"}


def test_job_past_its_deadline_reads_as_failed(client: TestClient, storage: Storage) -> None:
    store = JobStore(storage)
    past = datetime.now(UTC) - timedelta(hours=1)
    record = store.create(
        "gen_20250528_134211_a1b2c3d4", GenerationParams("x", 1, 3.0, 1.0, 1), past, queue_timeout_s=60, eta_s=5
    )
    store.save(record.model_copy(update={"status": JobStatus.RUNNING}))
    job = client.get("/jobs/gen_20250528_134211_a1b2c3d4").json()
    assert job["status"] == "failed"
    assert job["error"] == EXPIRED_ERROR
    assert "retry-after" not in client.get("/jobs/gen_20250528_134211_a1b2c3d4").headers
    # Derived on read, never written: the worker owns the record.
    assert storage.get_job("gen_20250528_134211_a1b2c3d4")["status"] == "running"  # type: ignore[index]


OLD_RECORD = {
    "job_id": "gen_20250528_134211_a1b2c3d4",
    "status": "succeeded",
    "progress": 1.0,
    "eta_seconds": 0.0,
    "created_at": "2025-05-28T13:42:11.250000Z",
    "updated_at": "2025-05-28T13:42:20.250000Z",
    "deadline": "2025-05-28T13:43:20.250000Z",
    "error": None,
    "text": "雨 on a tin roof",
    "duration": 2,
    "guidance_scale": 3.0,
    "temperature": 0.9,
    "seed": 4242,
}
"""A record as stored before the parameters were one field (written by that code, copied verbatim)."""


def test_a_record_stored_with_flat_parameters_still_loads_and_is_served(client: TestClient, storage: Storage) -> None:
    record = JobRecord.model_validate(OLD_RECORD)
    assert record.params == GenerationParams("雨 on a tin roof", 2, 3.0, 0.9, 4242)
    assert record.status is JobStatus.SUCCEEDED
    assert record.created_at == datetime(2025, 5, 28, 13, 42, 11, 250000, tzinfo=UTC)

    assert record.output == AudioOutput(AudioFormat.WAV, Normalization.PEAK), "what every job made then"

    storage.put_job(OLD_RECORD["job_id"], OLD_RECORD)  # type: ignore[arg-type]
    job = client.get("/jobs/gen_20250528_134211_a1b2c3d4").json()
    assert job["status"] == "succeeded"
    assert job["file_url"] == "/files/gen_20250528_134211_a1b2c3d4.wav"
    assert (job["format"], job["normalize"]) == ("wav", "peak")
    assert (job["text"], job["duration"], job["guidance_scale"], job["temperature"], job["seed"]) == (
        "雨 on a tin roof",
        2,
        3.0,
        0.9,
        4242,
    )


def test_a_record_keeps_its_parameters_as_one_field(local_storage: LocalStorage) -> None:
    params = GenerationParams("rain", 3, 2.5, 0.7, 11)
    JobStore(local_storage).create("gen_20250528_134211_a1b2c3d4", params, datetime.now(UTC), 60, 5)
    stored = local_storage.get_job("gen_20250528_134211_a1b2c3d4")
    assert stored is not None
    assert stored["params"] == {"prompt": "rain", "duration": 3, "guidance_scale": 2.5, "temperature": 0.7, "seed": 11}
    assert "text" not in stored
    loaded = JobStore(local_storage).get("gen_20250528_134211_a1b2c3d4")
    assert loaded is not None
    assert loaded.params == params


def test_a_second_delivery_of_a_running_job_does_not_run_it_again(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> None:
    from handler.app import create_app
    from handler.jobs import run_job

    store = JobStore(local_storage)
    now = datetime.now(UTC)
    record = store.create("gen_20250528_134211_a1b2c3d4", GenerationParams("x", 1, 3.0, 1.0, 1), now, 60, 5)
    store.save(record.model_copy(update={"status": JobStatus.RUNNING, "deadline": now + timedelta(hours=1)}))
    services = create_app(settings, local_storage, generator).state.services
    assert run_job(services, record.job_id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert local_storage.list_files() == []


def test_progress_writes_move_the_deadline_forward(local_storage: LocalStorage) -> None:
    from handler.jobs import HEARTBEAT_GRACE_S, ProgressWriter

    store = JobStore(local_storage)
    now = datetime.now(UTC)
    record = store.create("gen_20250528_134211_a1b2c3d4", GenerationParams("x", 1, 3.0, 1.0, 1), now, 60, 5)
    record = record.model_copy(update={"status": JobStatus.RUNNING, "deadline": now + timedelta(seconds=1)})
    writer = ProgressWriter(store, record, interval_s=0.0)
    writer(0.5)
    saved = store.get(record.job_id)
    assert saved is not None
    assert saved.status is JobStatus.RUNNING
    assert saved.progress == 0.5
    assert saved.deadline >= now + timedelta(seconds=HEARTBEAT_GRACE_S)


def test_the_first_progress_is_written_at_once_then_once_per_interval(local_storage: LocalStorage) -> None:
    from handler.jobs import ProgressWriter

    store = JobStore(local_storage)
    now = datetime.now(UTC)
    record = store.create("gen_20250528_134211_a1b2c3d4", GenerationParams("x", 1, 3.0, 1.0, 1), now, 60, 5)
    writer = ProgressWriter(store, record, interval_s=3600.0)
    writer(0.1)
    writer(0.2)  # within the interval: not written
    saved = store.get(record.job_id)
    assert saved is not None
    assert saved.progress == 0.1


def test_local_queue_runs_jobs_in_order_one_at_a_time() -> None:
    queue = LocalJobQueue()
    order: list[str] = []
    running: list[str] = []
    last_done = threading.Event()

    def run(job_id: str) -> None:
        assert running == []
        running.append(job_id)
        order.append(job_id)
        running.remove(job_id)
        if job_id == "c":
            last_done.set()

    queue.runner = run
    for job_id in ["a", "b", "c"]:
        queue.submit(job_id)
    assert last_done.wait(timeout=30)
    assert order == ["a", "b", "c"]


def test_a_crashing_job_does_not_stop_the_queue() -> None:
    queue = LocalJobQueue()
    ran: list[str] = []
    last_done = threading.Event()

    def run(job_id: str) -> None:
        ran.append(job_id)
        if job_id == "boom":
            raise RuntimeError("crash")
        last_done.set()

    queue.runner = run
    queue.submit("boom")
    queue.submit("next")
    assert last_done.wait(timeout=30)
    assert ran == ["boom", "next"]


def lambda_app() -> Any:
    return importlib.import_module("handler.app").app


def capture_invocations(client: Any) -> list[dict[str, Any]]:
    """Every Invoke call's parameters, as they reach botocore."""
    calls: list[dict[str, Any]] = []
    client.meta.events.register("provide-client-params.lambda.Invoke", lambda params, **_: calls.append(params))
    return calls


def generate_event(duration: int, function_url: bool = False) -> dict[str, Any]:
    event = load_event("generate")
    event["body"] = json.dumps({**json.loads(event["body"]), "duration": duration})
    if function_url:
        domain = "abcdefghij.lambda-url.eu-west-1.on.aws"
        event["requestContext"]["domainName"] = event["headers"]["host"] = domain
    return event


def test_lambda_async_request_invokes_itself_and_the_job_event_runs_it(
    lambda_handler: Handler, s3_objects: Callable[[], list[str]]
) -> None:
    invoker = lambda_app().state.services.jobs
    calls = capture_invocations(invoker.client)
    stubber = Stubber(invoker.client)
    event = generate_event(1)
    event["headers"]["prefer"] = "respond-async"
    stubber.add_response(
        "invoke",
        {"StatusCode": 202},
        expected_params={"FunctionName": "MusicFunction", "InvocationType": "Event", "Payload": ANY},
    )
    with stubber:
        accepted = lambda_handler(event, LambdaContext())
        stubber.assert_no_pending_responses()
    assert accepted["statusCode"] == 202
    body = json.loads(accepted["body"])
    [call] = calls
    payload = json.loads(call["Payload"])
    assert payload == job_event(body["job_id"])

    result = lambda_handler(payload, LambdaContext())
    assert result == {"job_id": body["job_id"], "status": "succeeded"}
    assert f"generated/{body['job_id']}.wav" in s3_objects()
    assert f"generated/jobs/{body['job_id']}.json" in s3_objects()

    status_event = load_event("health")
    status_event["rawPath"] = status_event["requestContext"]["http"]["path"] = body["status_url"]
    job = json.loads(lambda_handler(status_event, LambdaContext())["body"])
    assert job["status"] == "succeeded"

    download = load_event("download_file")
    download["rawPath"] = download["requestContext"]["http"]["path"] = body["file_url"]
    location = lambda_handler(download, LambdaContext())["headers"]["location"]
    assert len(read_wav(httpx.get(location).content).samples) == 32000


def test_gateway_request_over_budget_gets_202_within_budget_gets_200(lambda_handler: Handler) -> None:
    invoker = lambda_app().state.services.jobs
    stubber = Stubber(invoker.client)
    stubber.add_response("invoke", {"StatusCode": 202})
    with stubber:
        long_clip = lambda_handler(generate_event(30), LambdaContext())
        stubber.assert_no_pending_responses()
    assert long_clip["statusCode"] == 202
    assert long_clip["headers"]["location"].startswith("/jobs/gen_")
    assert "preference-applied" not in long_clip["headers"]

    short_clip = lambda_handler(generate_event(1), LambdaContext())
    assert short_clip["statusCode"] == 200
    assert json.loads(short_clip["body"])["duration"] == 1


def test_function_url_requests_run_synchronously_whatever_the_length(lambda_handler: Handler) -> None:
    response = lambda_handler(generate_event(30, function_url=True), LambdaContext())
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["duration"] == 30


def test_job_that_cannot_be_dispatched_is_503_and_recorded_failed(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> None:
    import boto3

    from handler.app import create_app
    from handler.jobs import LambdaJobInvoker

    invoker = LambdaJobInvoker(boto3.client("lambda", region_name="eu-west-1"), "MusicFunction")
    stubber = Stubber(invoker.client)
    stubber.add_client_error("invoke", service_error_code="TooManyRequestsException", http_status_code=429)
    with stubber, TestClient(create_app(settings, local_storage, generator, invoker)) as client:
        response = client.post("/generate/", json={"text": "drums", "duration": 1}, headers=ASYNC)
    assert response.status_code == 503
    assert response.json() == {"detail": "Could not start the job"}
    [job_id] = local_storage.list_jobs()
    record = JobStore(local_storage).get(job_id)
    assert record is not None
    assert record.status is JobStatus.FAILED
    assert record.error == "Could not start the job"


def test_the_local_queue_holds_at_most_its_bound_of_waiting_jobs() -> None:
    queue = LocalJobQueue(max_waiting=2)
    assert queue.reserve("a", 10.0) == 0.0
    assert queue.reserve("b", 10.0) == 10.0  # the wait counts the job ahead
    with pytest.raises(QueueFullError):
        queue.reserve("c", 10.0)
    queue.release("a")
    assert queue.reserve("c", 10.0) == 10.0


def test_the_local_queue_takes_no_job_whose_wait_passes_its_bound() -> None:
    queue = LocalJobQueue(max_waiting=8, max_wait_s=15.0)
    queue.reserve("a", 10.0)
    queue.reserve("b", 10.0)
    with pytest.raises(QueueFullError) as raised:
        queue.reserve("c", 10.0)
    assert raised.value.retry_after_s == pytest.approx(5.0)


def test_a_job_past_the_queue_bound_is_refused_with_429_and_nothing_recorded(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> None:
    gated = SlowGatedGenerator(generator, estimate_s=40.0)
    with serve(settings, local_storage, gated, jobs=WaitableJobQueue(max_waiting=1)) as client:
        first = client.post("/generate/", json={"text": "one", "duration": 1}, headers=ASYNC)
        assert first.status_code == 202, first.text
        assert gated.started.wait(timeout=30)  # the first runs; the second waits behind it
        second = client.post("/generate/", json={"text": "two", "duration": 1}, headers=ASYNC)
        assert second.status_code == 202
        assert second.json()["eta_seconds"] > first.json()["eta_seconds"] + 30  # the job ahead counts
        refused = client.post("/generate/", json={"text": "three", "duration": 1}, headers=ASYNC)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "Too many jobs" in refused.json()["detail"]
        assert len(local_storage.list_jobs()) == 2
        gated.gate.set()
        wait_for_jobs(client)
        statuses = [client.get(f"/jobs/{r.json()['job_id']}").json()["status"] for r in (first, second)]
        assert statuses == ["succeeded", "succeeded"]
        assert len(local_storage.list_files()) == 2


def test_a_job_that_would_wait_past_the_queue_timeout_is_refused(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator
) -> None:
    gated = SlowGatedGenerator(generator, estimate_s=40.0)
    queue = WaitableJobQueue(max_waiting=8, max_wait_s=60.0)
    with serve(settings, local_storage, gated, jobs=queue) as client:
        assert client.post("/generate/", json={"text": "one", "duration": 1}, headers=ASYNC).status_code == 202
        assert gated.started.wait(timeout=30)
        assert client.post("/generate/", json={"text": "two", "duration": 1}, headers=ASYNC).status_code == 202
        refused = client.post("/generate/", json={"text": "three", "duration": 1}, headers=ASYNC)
        assert refused.status_code == 429
        assert 15 <= int(refused.headers["Retry-After"]) <= 21  # about 80 s of wait against 60
        gated.gate.set()


def stored_record(storage: Storage, job_id: str, status: JobStatus, deadline_in_s: float = 600) -> None:
    now = datetime.now(UTC)
    record = JobRecord(
        job_id=job_id,
        status=status,
        created_at=now,
        updated_at=now,
        deadline=now + timedelta(seconds=deadline_in_s),
        params=GenerationParams("rain", 1, 3.0, 1.0, 1),
    )
    JobStore(storage).save(record)


def test_records_of_ended_jobs_beyond_the_cap_and_of_pruned_files_are_pruned(storage: Storage) -> None:
    job_ids = [new_filename(START + timedelta(minutes=i)).removesuffix(".wav") for i in range(5)]
    for job_id in job_ids:
        stored_record(storage, job_id, JobStatus.SUCCEEDED)
    pruned = JobStore(storage).prune(keep=3, pruned_files=[f"{job_ids[4]}.wav"])
    assert sorted(pruned) == [job_ids[0], job_ids[1], job_ids[4]]
    assert sorted(storage.list_jobs()) == job_ids[2:4]


def test_a_job_not_yet_ended_keeps_its_record_however_old(storage: Storage) -> None:
    job_ids = [new_filename(START + timedelta(minutes=i)).removesuffix(".wav") for i in range(4)]
    stored_record(storage, job_ids[0], JobStatus.QUEUED)  # another server may be about to run it
    stored_record(storage, job_ids[1], JobStatus.RUNNING, deadline_in_s=-1)  # its worker died: expired
    for job_id in job_ids[2:]:
        stored_record(storage, job_id, JobStatus.FAILED)
    storage.put_job(job_ids[3], {"not": "a record"})
    assert sorted(JobStore(storage).prune(keep=1)) == [job_ids[1], job_ids[2]]
    assert sorted(storage.list_jobs()) == [job_ids[0], job_ids[3]]
