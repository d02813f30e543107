"""Shared fixtures: a tiny offline MusicGen, storage backends, a moto S3 server, API clients.

Only fixtures live here; the helpers they and the tests use are in tests/support.
"""

import importlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto.moto_server import werkzeug_app as moto_werkzeug_app
from moto.server import ThreadedMotoServer

from benchmarks.random_models import build_tiny_model
from handler.musicgen.generator import MusicgenGenerator
from handler.settings import Settings, get_settings
from handler.storage import LocalStorage, S3Storage, Storage, s3_client
from tests.support.app import serve
from tests.support.infra_files import ROOT, dockerfile_stages, function_environment, load_template, parameter_defaults
from tests.support.lambda_events import LambdaContext
from tests.support.runtime_api import LambdaRuntime, RuntimeApiStub
from tests.support.s3 import S3_REGION, S3Request


@pytest.fixture(scope="session", autouse=True)
def user_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's cache directory (where artifacts baked at a first start go), moved to a
    temporary one for the whole run, subprocesses included."""
    directory = tmp_path_factory.mktemp("user-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(directory))
        yield directory


@pytest.fixture
def forced_kernels(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Sets NATIVE_KERNELS for the process's settings; the settings are read afresh after."""

    def force(name: str) -> None:
        monkeypatch.setenv("NATIVE_KERNELS", name)
        get_settings.cache_clear()

    yield force
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight MusicGen with its processor, saved with save_pretrained."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-musicgen"))


@pytest.fixture(scope="session")
def generator(tiny_model_dir: Path) -> MusicgenGenerator:
    """The real engine, loading the tiny model through MODEL_ID's path."""
    return MusicgenGenerator(str(tiny_model_dir))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1: real HTTP for real boto3. Browsers get CORS headers only where a
    bucket's own CORS rules allow, as from S3 (moto's blanket CORS for every request is off)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(moto_werkzeug_app, "DISABLE_GLOBAL_CORS", True)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
        server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS variables pointing boto3 at the moto server, in a region other than us-east-1."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_REGION", S3_REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_bucket(aws_env: str) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"music-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": S3_REGION})
    return name


@pytest.fixture
def s3_objects(s3_bucket: str) -> Any:
    """A function listing every key in the test bucket."""

    def keys() -> list[str]:
        response = boto3.client("s3").list_objects_v2(Bucket=s3_bucket)
        return sorted(obj["Key"] for obj in response.get("Contents", []))

    return keys


@pytest.fixture
def local_storage(tmp_path: Path) -> LocalStorage:
    """Local storage in a fresh directory."""
    return LocalStorage(tmp_path / "generated")


@pytest.fixture
def s3_storage(s3_bucket: str) -> S3Storage:
    """S3 storage under a prefix of a fresh bucket."""
    return S3Storage(s3_client(), s3_bucket, prefix="generated/")


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> Storage:
    """Each test using this runs once per backend."""
    backend: Storage = request.getfixturevalue(f"{request.param}_storage")
    return backend


@pytest.fixture
def settings(tiny_model_dir: Path, tmp_path: Path) -> Settings:
    """Settings serving the tiny model, files in a fresh directory."""
    return Settings(model_id=str(tiny_model_dir), storage_dir=tmp_path / "generated")


@pytest.fixture
def client(settings: Settings, storage: Storage, generator: MusicgenGenerator) -> Iterator[TestClient]:
    """The app over the tiny model, once with local storage and once with S3."""
    with serve(settings, storage, generator) as test_client:
        yield test_client


@pytest.fixture
def local_client(settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator) -> Iterator[TestClient]:
    """The app over the tiny model with local storage only."""
    with serve(settings, local_storage, generator) as test_client:
        yield test_client


@pytest.fixture
def recording_s3_storage(s3_bucket: str) -> tuple[S3Storage, list[S3Request]]:
    """S3 storage under template.yaml's default prefix, and every request its client builds or presigns."""
    client = s3_client()
    requests: list[S3Request] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        requests.append(S3Request(model.name, dict(params)))

    client.meta.events.register("before-parameter-build.s3", record)
    prefix = parameter_defaults(load_template())["FilePrefix"]
    return S3Storage(client, s3_bucket, Settings(s3_prefix=prefix).s3_prefix), requests


@pytest.fixture
def lambda_context() -> LambdaContext:
    """A fresh Lambda context object."""
    return LambdaContext()


@pytest.fixture
def lambda_handler(
    tiny_model_dir: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[dict[str, Any], Any], dict[str, Any]]]:
    """`handler.app.handler` as a fresh Lambda process sees it: settings from the environment, S3 storage."""
    import handler.app

    monkeypatch.setenv("MODEL_ID", str(tiny_model_dir))
    monkeypatch.setenv("S3_BUCKET", s3_bucket)
    monkeypatch.setenv("S3_PREFIX", "generated")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "MusicFunction")
    get_settings.cache_clear()
    module = importlib.reload(handler.app)
    yield module.handler
    monkeypatch.undo()
    get_settings.cache_clear()
    importlib.reload(handler.app)


@pytest.fixture
def lambda_runtime(tiny_model_dir: Path, s3_bucket: str, tmp_path: Path) -> Iterator[LambdaRuntime]:
    """The image's entry point without Docker: AWS's runtime interface client in its own process,
    with the environment template.yaml and the Dockerfile give it (MODEL_ID moved to the tiny
    model, /tmp to a temporary directory, S3 to the moto server), polling a local Runtime API.
    """
    api = RuntimeApiStub()
    api.start()
    environment = function_environment(s3_bucket, tmp_path / "lambda-tmp")
    environment |= {
        "MODEL_ID": str(tiny_model_dir),
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "LAMBDA_TASK_ROOT": str(ROOT),
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "NO_PROXY": "127.0.0.1,localhost",
        # LAMBDA_TASK_ROOT makes Powertools trace; no X-Ray daemon listens here, and none is tried.
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL_S3",
    ):
        environment[name] = os.environ[name]
    command = [sys.executable, "-m", "awslambdaric", *dockerfile_stages()[-1].cmd()]
    log_path = tmp_path / "runtime.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)

    def watch() -> None:
        process.wait()
        api.abort(f"the runtime exited with status {process.returncode}")

    threading.Thread(target=watch, daemon=True).start()
    yield LambdaRuntime(api, log_path, environment)
    process.terminate()
    process.wait(timeout=60)
    api.close()
