"""Readers for template.yaml and infra/Dockerfile, so tests can hold them to the code."""

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """YAML with CloudFormation's short tags turned into their long forms (`!Ref x` -> {"Ref": x})."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template() -> dict[str, Any]:
    template: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return template


def parameter_defaults(template: dict[str, Any]) -> dict[str, str]:
    """Each parameter's default, as the string CloudFormation substitutes."""
    return {name: str(spec["Default"]) for name, spec in template["Parameters"].items() if "Default" in spec}


def bucket_cors(template: dict[str, Any]) -> dict[str, Any]:
    """The music bucket's CORS rules, as boto3's `put_bucket_cors` takes them."""
    rules = template["Resources"]["MusicBucket"]["Properties"]["CorsConfiguration"]["CorsRules"]
    names = {"Id": "ID", "MaxAge": "MaxAgeSeconds"}
    return {"CORSRules": [{names.get(key, key): value for key, value in rule.items()} for rule in rules]}


def resolve(value: Any, refs: dict[str, str]) -> str:
    """A template value with `Ref`s and `Fn::Sub` variables replaced from `refs` (names without dots)."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return refs[value["Ref"]]
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        text: str = value["Fn::Sub"]
        for name, replacement in refs.items():
            text = text.replace(f"${{{name}}}", replacement)
        assert "${" not in text, f"unresolved variable in {text!r}"
        return text
    assert not isinstance(value, dict | list), f"cannot resolve {value!r}"
    return str(value)


@dataclass
class Stage:
    """One build stage of a Dockerfile: its base, name and instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The stage's ENV variables (key=value forms)."""
        variables: dict[str, str] = {}
        for keyword, arguments in self.instructions:
            if keyword == "ENV":
                for word in shlex.split(arguments):
                    key, _, value = word.partition("=")
                    variables[key] = value
        return variables

    def cmd(self) -> list[str]:
        """The stage's last CMD, which must be in exec (JSON) form."""
        commands = [arguments for keyword, arguments in self.instructions if keyword == "CMD"]
        command: list[str] = json.loads(commands[-1])
        return command

    def run_commands(self) -> list[str]:
        return [arguments for keyword, arguments in self.instructions if keyword == "RUN"]


def dockerfile_stages(text: str | None = None) -> list[Stage]:
    """The stages of infra/Dockerfile (comments dropped, continuation lines joined)."""
    text = DOCKERFILE.read_text() if text is None else text
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for instruction in logical:
        keyword, _, arguments = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, arguments.strip()))
    return stages


STACK_NAME = "srocks"
"""The stack name the tests deploy under, for resolving `${AWS::StackName}`."""


def _relocate(value: str, tmp: Path) -> str:
    """`/tmp/...` (Lambda's only writable directory) moved under `tmp`."""
    if value == "/tmp" or value.startswith("/tmp/"):
        return str(tmp) + value.removeprefix("/tmp")
    return value


def function_environment(bucket: str, tmp: Path) -> dict[str, str]:
    """The environment Lambda gives the function: the image's ENV, then template.yaml's variables
    (which win, as on Lambda), then what Lambda itself sets for the configuration in the template.

    `${AWS::StackName}` is STACK_NAME, the bucket resource is `bucket`, parameters take their
    defaults, and paths under /tmp move under `tmp`; nothing else is changed.
    """
    template = load_template()
    function = template["Resources"]["MusicFunction"]["Properties"]
    refs = parameter_defaults(template) | {"MusicBucket": bucket, "AWS::StackName": STACK_NAME}
    environment = dockerfile_stages()[-1].env()
    for name, value in function["Environment"]["Variables"].items():
        environment[name] = resolve(value, refs)
    log_group = template["Resources"]["MusicLogGroup"]["Properties"]["LogGroupName"]
    environment |= {
        "AWS_LAMBDA_FUNCTION_NAME": resolve(function["FunctionName"], refs),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": resolve(function["MemorySize"], refs),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_FORMAT": function["LoggingConfig"]["LogFormat"],
        "AWS_LAMBDA_LOG_GROUP_NAME": resolve(log_group, refs),
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/11/24/[$LATEST]0123456789abcdef",
        "_HANDLER": dockerfile_stages()[-1].cmd()[0],
    }
    return {name: _relocate(value, tmp) for name, value in environment.items()}
