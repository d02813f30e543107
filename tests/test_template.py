"""template.yaml and infra/Dockerfile, held to the code they deploy."""

import importlib
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError

from handler.filenames import new_filename
from handler.observability.metrics import BREAKDOWNS, NAMESPACE, Metric, record_job_outcome
from handler.settings import Settings
from handler.storage import S3Storage, StorageError, prune
from tests.support.infra_files import (
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    bucket_cors,
    dockerfile_stages,
    load_template,
    parameter_defaults,
    resolve,
)
from tests.support.observability import data_points
from tests.support.s3 import S3Request

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
FUNCTION = RESOURCES["MusicFunction"]
PROPERTIES = FUNCTION["Properties"]
ENVIRONMENT: dict[str, Any] = PROPERTIES["Environment"]["Variables"]
FINAL_STAGE = dockerfile_stages()[-1]

S3_ACTIONS = {
    "PutObject": "s3:PutObject",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "ListObjectsV2": "s3:ListBucket",
}
"""The IAM action S3 authorizes each API operation with (DeleteObjects: s3:DeleteObject per key)."""


def test_environment_is_the_apps_settings_one_for_one() -> None:
    # AWS_* settings are set by the Lambda runtime itself and may not be set in a template.
    settings = {name.upper() for name in Settings.model_fields if not name.startswith("aws_")}
    assert set(ENVIRONMENT) == settings
    assert not [name for name in ENVIRONMENT if name.startswith(("AWS_", "LAMBDA_", "_"))]


def test_every_environment_value_is_a_valid_setting() -> None:
    refs = parameter_defaults(TEMPLATE) | {"MusicBucket": "srocks-music-bucket"}
    values = {name.lower(): resolve(value, refs) for name, value in ENVIRONMENT.items()}
    settings = Settings.model_validate(values)
    assert settings.s3_bucket == "srocks-music-bucket"
    assert settings.max_files == TEMPLATE["Parameters"]["MaxFiles"]["Default"]
    assert str(settings.storage_dir).startswith("/tmp/")  # the only writable path on Lambda


def test_max_duration_is_the_contracts_30_s_by_default_and_bounded_like_the_setting() -> None:
    parameter = TEMPLATE["Parameters"]["MaxDuration"]
    assert ENVIRONMENT["MAX_DURATION"] == {"Ref": "MaxDuration"}
    assert parameter["Default"] == Settings().max_duration == 30
    assert (parameter["MinValue"], parameter["MaxValue"]) == (1, 300)
    Settings(max_duration=parameter["MaxValue"])
    with pytest.raises(ValidationError):
        Settings(max_duration=parameter["MaxValue"] + 1)


def test_bucket_and_prefix_reach_the_app() -> None:
    assert ENVIRONMENT["S3_BUCKET"] == {"Ref": "MusicBucket"}
    assert RESOURCES["MusicBucket"]["Type"] == "AWS::S3::Bucket"
    assert ENVIRONMENT["S3_PREFIX"] == {"Ref": "FilePrefix"}
    prefix = str(TEMPLATE["Parameters"]["FilePrefix"]["Default"])
    key_prefix = Settings(s3_prefix=prefix).s3_prefix
    assert key_prefix == f"{prefix}/"
    # The lifecycle backstop expires exactly the keys the app writes.
    rules = RESOURCES["MusicBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = [rule for rule in rules if "ExpirationInDays" in rule]
    assert [resolve(rule["Prefix"], {"FilePrefix": prefix}) for rule in expiring] == [key_prefix]
    assert expiring[0]["ExpirationInDays"] == {"Ref": "FileExpirationDays"}


def test_health_reports_the_baked_model_as_musicgen_small() -> None:
    from handler.routes import model_name

    assert model_name(ENVIRONMENT["MODEL_ID"]) == "musicgen-small"


def test_model_id_is_the_directory_the_image_bakes() -> None:
    assert ENVIRONMENT["MODEL_ID"] == FINAL_STAGE.env()["MODEL_ID"]
    model_stage = next(stage for stage in dockerfile_stages() if stage.name == "model")
    assert any("bake_model.py" in run and ENVIRONMENT["MODEL_ID"] in run for run in model_stage.run_commands())
    copies = [arguments.split() for keyword, arguments in FINAL_STAGE.instructions if keyword == "COPY"]
    assert ["--from=model", ENVIRONMENT["MODEL_ID"], ENVIRONMENT["MODEL_ID"]] in copies


def test_image_never_contacts_the_hub_and_caches_under_tmp() -> None:
    env = FINAL_STAGE.env()
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HOME"].startswith("/tmp/")


def test_dockerfile_cmd_names_the_real_handler() -> None:
    [handler_path] = FINAL_STAGE.cmd()
    module_name, _, attribute = handler_path.rpartition(".")
    handler = getattr(importlib.import_module(module_name), attribute)
    assert callable(handler)
    assert FINAL_STAGE.base.startswith("${BASE_IMAGE}")
    assert "ARG BASE_IMAGE=public.ecr.aws/lambda/python:" in DOCKERFILE.read_text()


def test_image_installs_cpu_torch_and_the_ci_requirements() -> None:
    # The lock itself, and how it is installed, are tests/test_dependencies.py's.
    deps = next(stage for stage in dockerfile_stages() if stage.name == "deps")
    [install] = deps.run_commands()
    assert '--index-url "${TORCH_INDEX}"' in install
    assert "-r /tmp/requirements.lock" in install
    assert "--no-cache-dir" in install
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in DOCKERFILE.read_text()
    assert ("COPY", "requirements.lock /tmp/requirements.lock") in deps.instructions


def test_image_copies_only_what_it_runs() -> None:
    copies = [arguments for keyword, arguments in FINAL_STAGE.instructions if keyword == "COPY"]
    sources = {arguments.split()[-2] for arguments in copies if not arguments.startswith("--from")}
    assert sources == {"handler/"}
    assert "handler/ ${LAMBDA_TASK_ROOT}/handler/" in copies  # where the CMD's module is imported from
    ignored = DOCKERIGNORE.read_text().splitlines()
    assert ignored[ignored.index("*") + 1 :][:3] == ["!requirements.lock", "!handler/", "!infra/bake_model.py"]


def test_sam_builds_the_image_from_the_repository_root() -> None:
    metadata = FUNCTION["Metadata"]
    assert (ROOT / metadata["DockerContext"] / metadata["Dockerfile"]) == DOCKERFILE
    assert metadata["DockerTag"]
    assert PROPERTIES["PackageType"] == "Image"
    assert PROPERTIES["Timeout"] == 900
    assert TEMPLATE["Parameters"]["MemorySize"]["Default"] == 10240


def test_function_name_is_fixed_and_matches_its_log_group() -> None:
    refs = {"AWS::StackName": "srocks"}
    name = resolve(PROPERTIES["FunctionName"], refs)
    log_group = resolve(RESOURCES["MusicLogGroup"]["Properties"]["LogGroupName"], refs)
    assert log_group == f"/aws/lambda/{name}"
    assert PROPERTIES["LoggingConfig"] == {"LogFormat": "JSON", "LogGroup": {"Ref": "MusicLogGroup"}}


def test_bucket_is_private_encrypted_tls_only_and_cleans_up() -> None:
    bucket = RESOURCES["MusicBucket"]["Properties"]
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    [deny] = RESOURCES["MusicBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert (deny["Effect"], deny["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": "false"}})
    rules = bucket["LifecycleConfiguration"]["Rules"]
    assert any("AbortIncompleteMultipartUpload" in rule for rule in rules)


def test_bucket_lets_browsers_read_downloads_and_nothing_else() -> None:
    """The studio page reads presigned downloads cross-origin (tests/studio drive it against this rule)."""
    [rule] = bucket_cors(TEMPLATE)["CORSRules"]
    assert sorted(rule["AllowedMethods"]) == ["GET", "HEAD"]
    assert rule["AllowedOrigins"] == ["*"]
    assert "AllowedHeaders" not in rule
    assert "ExposedHeaders" not in rule


def test_http_api_function_url_and_outputs() -> None:
    [event] = PROPERTIES["Events"].values()
    assert event["Type"] == "HttpApi"
    assert event["Properties"]["ApiId"] == {"Ref": "MusicHttpApi"}
    assert "Path" not in event["Properties"]  # the $default route: every path reaches the app
    assert "StageName" not in RESOURCES["MusicHttpApi"]["Properties"]  # $default stage, no prefix
    assert PROPERTIES["FunctionUrlConfig"]["AuthType"] == {"Ref": "FunctionUrlAuthType"}
    assert PROPERTIES["Tracing"] == "Active"
    assert PROPERTIES["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}
    assert set(TEMPLATE["Outputs"]) >= {"ApiUrl", "FunctionUrl", "BucketName"}


# --- IAM: exactly what the storage code calls ------------------------------------------------


def exercise(storage: S3Storage) -> None:
    """Every path of the storage code that calls S3."""
    names = [new_filename(datetime.now(UTC)) for _ in range(3)]
    for name in names:
        storage.save(name, b"RIFF", {"prompt": "x"})
    storage.list_files()
    assert storage.stat(names[0]) is not None
    assert storage.read_metadata(names) == {name: {"prompt": "x"} for name in names}
    assert storage.download(names[0]) is not None
    assert storage.download(new_filename(datetime(2020, 1, 1, tzinfo=UTC))) is None
    job_id = names[0].removesuffix(".wav")
    storage.put_job(job_id, {"job_id": job_id})
    assert storage.get_job(job_id) is not None
    assert storage.get_job("gen_20200101_000000_00000000") is None
    storage.list_jobs()
    prune(storage, keep=1)
    storage.delete(names[-1:])
    storage.delete_jobs([job_id])

    def refuse_wav(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].endswith(".wav"):
            raise ClientError({"Error": {"Code": "InternalError", "Message": "refused"}}, "PutObject")

    storage.client.meta.events.register("before-parameter-build.s3.PutObject", refuse_wav)
    with pytest.raises(StorageError):
        storage.save(names[0], b"RIFF", {})  # the sidecar is written, then cleaned up


def allowed(statements: list[dict[str, Any]], action: str, resource: str, context: dict[str, str]) -> bool:
    """Whether Allow statements (no Deny, no NotAction) grant `action` on `resource` with `context`."""
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] != "Allow" or action not in actions:
            continue
        if not fnmatchcase(resource, statement["Resource"]):
            continue
        conditions = statement.get("Condition", {})
        assert set(conditions) <= {"StringLike"}, conditions
        if all(
            key in context and fnmatchcase(context[key], pattern)
            for key, pattern in conditions.get("StringLike", {}).items()
        ):
            return True
    return False


def inline_statements() -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for policy in PROPERTIES["Policies"]:
        assert isinstance(policy, dict), f"only inline policies, not SAM policy templates: {policy}"
        statements += policy["Statement"]
    return statements


def statement_actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


def policy_statements(bucket: str) -> list[dict[str, Any]]:
    """The S3 statements, with references resolved for `bucket`."""
    refs = parameter_defaults(TEMPLATE) | {"MusicBucket.Arn": f"arn:aws:s3:::{bucket}"}
    statements: list[dict[str, Any]] = []
    for statement in inline_statements():
        if all(action.startswith("s3:") for action in statement_actions(statement)):
            resource = statement["Resource"]
            if resource == {"Fn::GetAtt": ["MusicBucket", "Arn"]}:
                resource = refs["MusicBucket.Arn"]
            condition = {
                operator: {key: resolve(value, refs) for key, value in keys.items()}
                for operator, keys in statement.get("Condition", {}).items()
            }
            statements.append(statement | {"Resource": resolve(resource, refs), "Condition": condition})
    return statements


def test_only_other_grant_is_invoking_this_same_function_for_jobs() -> None:
    others = [s for s in inline_statements() if not all(a.startswith("s3:") for a in statement_actions(s))]
    [invoke] = others
    assert statement_actions(invoke) == ["lambda:InvokeFunction"]
    function_name = PROPERTIES["FunctionName"]["Fn::Sub"]
    assert invoke["Resource"]["Fn::Sub"].endswith(f":function:{function_name}")
    assert "MusicFunction" not in str(invoke["Resource"]), "no reference to the function itself (circular)"
    assert PROPERTIES["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    assert PROPERTIES["EventInvokeConfig"]["MaximumEventAgeInSeconds"] == {"Ref": "JobQueueTimeoutSeconds"}
    assert ENVIRONMENT["JOB_QUEUE_TIMEOUT_SECONDS"] == {"Ref": "JobQueueTimeoutSeconds"}


def test_iam_actions_are_exactly_what_the_storage_code_calls(
    recording_s3_storage: tuple[S3Storage, list[S3Request]],
) -> None:
    storage, requests = recording_s3_storage
    exercise(storage)
    called = {S3_ACTIONS[request.operation] for request in requests}
    granted: set[str] = set()
    for statement in policy_statements(storage.bucket):
        granted |= set(statement_actions(statement))
    assert called == granted
    assert {request.operation for request in requests} >= {"PutObject", "ListObjectsV2", "GetObject", "DeleteObjects"}
    assert not [a for a in granted if "*" in a]


def test_iam_resources_allow_every_request_and_nothing_outside_the_prefix(
    recording_s3_storage: tuple[S3Storage, list[S3Request]],
) -> None:
    storage, requests = recording_s3_storage
    exercise(storage)
    statements = policy_statements(storage.bucket)
    bucket_arn = f"arn:aws:s3:::{storage.bucket}"
    for request in requests:
        action = S3_ACTIONS[request.operation]
        if request.operation == "ListObjectsV2":
            assert allowed(statements, action, bucket_arn, {"s3:prefix": request.params.get("Prefix", "")}), request
            continue
        keys = [obj["Key"] for obj in request.params["Delete"]["Objects"]] if "Delete" in request.params else []
        for key in keys or [request.params["Key"]]:
            assert allowed(statements, action, f"{bucket_arn}/{key}", {}), request
        if request.operation == "HeadObject":
            # S3 answers a missing key with 404 only to callers allowed to list the whole bucket.
            assert allowed(statements, "s3:ListBucket", bucket_arn, {}), "HeadObject on a missing key would be 403"
    # Nothing outside the prefix.
    assert not allowed(statements, "s3:GetObject", f"{bucket_arn}/other/gen.wav", {})
    assert not allowed(statements, "s3:PutObject", f"{bucket_arn}/gen.wav", {})
    assert not allowed(statements, "s3:ListBucket", bucket_arn, {"s3:prefix": ""})
    assert not allowed(statements, "s3:ListBucket", bucket_arn, {})


def test_image_builds_the_native_kernels_and_ships_only_the_libraries() -> None:
    stages = {stage.name: stage for stage in dockerfile_stages()}
    kernels_stage = stages["kernels"]
    assert kernels_stage.base == "deps"  # built against the torch the image runs
    [build] = kernels_stage.run_commands()
    assert "dnf install -y gcc" in build
    output = build.split("python -m handler.native.build ", 1)[1].split()[0]
    copies = [arguments.split() for keyword, arguments in FINAL_STAGE.instructions if keyword == "COPY"]
    assert ["--from=kernels", f"{output}/", "${LAMBDA_TASK_ROOT}/handler/native/"] in copies
    assert any("runtime.best() is not None" in run for run in FINAL_STAGE.run_commands())
    # Libraries built on a developer's machine never reach the build context.
    assert "**/*.so" in DOCKERIGNORE.read_text().splitlines()


def test_image_proves_libsndfile_encodes_every_format() -> None:
    [check] = [
        command
        for run in FINAL_STAGE.run_commands()
        for command in re.findall(r'python -c "([^"]*)"', run)
        if "handler.audio.encoding" in command
    ]
    assert "for f in AudioFormat" in check
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


# --- Operating it: alarms and the dashboard read what the code emits ---------------------------

ALARMS = {name: resource for name, resource in RESOURCES.items() if resource["Type"] == "AWS::CloudWatch::Alarm"}
AWS_METRICS = {
    ("AWS/Lambda", "FunctionName"): {"Ref": "MusicFunction"},
    ("AWS/ApiGateway", "ApiId"): {"Ref": "MusicHttpApi"},
}
"""The AWS namespaces the alarms may read, each with the one dimension naming this stack's resource."""


def emitted_by_code() -> dict[str, str | None]:
    """Each metric the code emits in its namespace, with the one dimension it is also broken down by."""
    return {metric.value: BREAKDOWNS.get(metric) for metric in Metric}


def test_alarms_cover_errors_throttles_duration_failed_jobs_storage_and_5xx() -> None:
    read = {(alarm["Properties"]["Namespace"], alarm["Properties"]["MetricName"]) for alarm in ALARMS.values()}
    assert read == {
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/Lambda", "Duration"),
        (NAMESPACE, "JobsFailed"),
        (NAMESPACE, "StorageErrors"),
        ("AWS/ApiGateway", "5xx"),
    }


def test_every_alarm_reads_a_metric_that_exists_with_the_dimensions_it_is_published_with() -> None:
    for name, alarm in ALARMS.items():
        properties = alarm["Properties"]
        dimensions = {item["Name"]: item["Value"] for item in properties.get("Dimensions", [])}
        if properties["Namespace"] == NAMESPACE:
            assert properties["MetricName"] in emitted_by_code(), name
            # The code publishes every metric without dimensions too: an alarm on another set reads nothing.
            assert dimensions == {}, name
        else:
            [(dimension, value)] = dimensions.items()
            assert AWS_METRICS[(properties["Namespace"], dimension)] == value, name
        assert properties["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert properties["TreatMissingData"] == "notBreaching"  # no data: nothing happened


def test_the_metric_catalogue_is_what_the_code_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """The catalogue the alarms are checked against is what the code really prints (the rest of
    it, from a real generation, in tests/observability/test_metrics.py)."""
    StorageError("x")
    record_job_outcome(succeeded=False)
    printed = {point.name for point in data_points(capsys.readouterr().out)}
    assert {"StorageErrors", "JobsFailed"} <= printed
    assert printed <= set(emitted_by_code())


def test_duration_alarm_fires_near_the_timeout() -> None:
    properties = ALARMS["FunctionDurationAlarm"]["Properties"]
    assert properties["Statistic"] == "Maximum"
    assert properties["Threshold"] == 0.9 * PROPERTIES["Timeout"] * 1000  # Duration is in milliseconds


def test_alarm_email_is_optional_and_no_topic_is_made_without_one() -> None:
    parameter = TEMPLATE["Parameters"]["AlarmEmail"]
    assert parameter["Default"] == ""
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.fullmatch("")
    assert pattern.fullmatch("ops@example.com")
    assert not pattern.fullmatch("not an address")
    assert TEMPLATE["Conditions"]["HasAlarmEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}
    topic = RESOURCES["AlarmTopic"]
    assert topic["Condition"] == "HasAlarmEmail"
    assert topic["Properties"]["Subscription"] == [{"Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}]
    no_topic = {"Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]}
    for name, alarm in ALARMS.items():
        assert alarm["Properties"]["AlarmActions"] == no_topic, name
        assert alarm["Properties"]["OKActions"] == no_topic, name
    # Nothing else refers to the topic, so without an address the stack holds no trace of it.
    others = {name: resource for name, resource in RESOURCES.items() if name not in ALARMS and name != "AlarmTopic"}
    assert "AlarmTopic" not in str(others) + str(TEMPLATE["Outputs"])


DASHBOARD_REFS = {"srocks-music": {"Ref": "MusicFunction"}, "abc123": {"Ref": "MusicHttpApi"}}
"""What the dashboard's references resolve to here, and the resource each names."""


DASHBOARD_REFS = {"srocks-music": {"Ref": "MusicFunction"}, "abc123": {"Ref": "MusicHttpApi"}}
"""What the dashboard's references resolve to here, and the resource each names."""


def dashboard_body() -> dict[str, Any]:
    """The dashboard's JSON, with this stack's names and every alarm's ARN filled in."""
    refs = {"AWS::Region": "eu-west-1", "MusicFunction": "srocks-music", "MusicHttpApi": "abc123"}
    refs |= {f"{name}.Arn": f"arn:aws:cloudwatch:eu-west-1:1:alarm:{name}" for name in ALARMS}
    body: dict[str, Any] = json.loads(resolve(RESOURCES["MusicDashboard"]["Properties"]["DashboardBody"], refs))
    return body


def test_dashboard_shows_every_metric_the_code_emits_and_every_alarm() -> None:
    widgets = dashboard_body()["widgets"]
    shown = [metric for widget in widgets for metric in widget["properties"].get("metrics", [])]
    ours = {metric[1] for metric in shown if metric[0] == NAMESPACE}
    assert ours == set(emitted_by_code())
    for metric in shown:
        if metric[0] == NAMESPACE:
            assert len(metric) == 3, f"{metric}: no dimensions, as the alarms read them"
        else:
            namespace, _name, dimension, value, _options = metric
            assert AWS_METRICS[(namespace, dimension)] == DASHBOARD_REFS[value]
    [alarm_widget] = [widget for widget in widgets if widget["type"] == "alarm"]
    assert sorted(alarm_widget["properties"]["alarms"]) == sorted(
        f"arn:aws:cloudwatch:eu-west-1:1:alarm:{name}" for name in ALARMS
    )
