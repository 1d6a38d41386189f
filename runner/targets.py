"""Targets: the models file, the built-in mock targets, keys from the environment."""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from runner.errors import InputError, at
from runner.providers import PROVIDERS, Provider

DEFAULT_BASE_URL = {
    "openai-chat": "https://api.openai.com/v1",
    "openai-responses": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com",
}
DEFAULT_KEY_ENV = {
    "openai-chat": "OPENAI_API_KEY",
    "openai-responses": "OPENAI_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
AUTH_MODES = ("x-goog-api-key", "query", "bearer", "raw")


@dataclass(slots=True)
class Target:
    """A named way to reach a model. The key itself is never serialised."""

    name: str
    provider: str
    model: str
    base_url: str = ""
    api_key_env: str | None = None
    auth: str | None = None
    stream: bool | None = None  # None: the command line decides
    params: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 32
    rpm: float | None = None
    tpm: float | None = None
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float | None = None
    max_retries: int = 6
    max_wait_s: float = 60.0
    price: dict[str, float] | None = None
    mock: dict[str, Any] | None = None  # options of an in-process mock server
    key: str | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        """The target as written to the manifest: everything but the key."""
        data = dataclasses.asdict(self)
        data.pop("key")
        return data


BUILTIN = {
    "mock": ("openai-chat", "mock-chat"),
    "mock-responses": ("openai-responses", "mock-responses"),
    "mock-gemini": ("gemini", "mock-gemini"),
}
FIELDS = {f.name for f in dataclasses.fields(Target)} - {"name", "key"}
TYPES: dict[str, tuple[type, ...]] = {
    "provider": (str,), "model": (str,), "base_url": (str,), "api_key_env": (str,),
    "auth": (str,), "stream": (bool,), "params": (dict,), "concurrency": (int,),
    "rpm": (int, float), "tpm": (int, float), "timeout_s": (int, float),
    "connect_timeout_s": (int, float), "first_byte_timeout_s": (int, float),
    "max_retries": (int,), "max_wait_s": (int, float), "price": (dict,), "mock": (dict,),
}  # fmt: skip


def mock_base_url(provider: str, server_url: str) -> str:
    """The base URL a provider uses against the mock server at server_url."""
    return server_url if provider == "gemini" else server_url + "/v1"


def mock_fields() -> set[str]:
    """Options a target may give its in-process mock server (imported only when used)."""
    from runner.mock import MockOptions

    return {f.name for f in dataclasses.fields(MockOptions)} - {"record"}


def builtin(name: str) -> Target:
    provider, model = BUILTIN[name]
    return Target(name, provider, model, concurrency=1000, max_wait_s=5.0, mock={})


def load_models(path: str) -> dict[str, Target]:
    """Read a models file ({targets: {name: {...}}}); errors name file and line."""
    try:
        with open(path, encoding="utf-8") as fh:
            root = yaml.compose(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(at(path, None, f"cannot read the models file: {exc}")) from None
    except yaml.YAMLError as exc:
        line = exc.problem_mark.line + 1 if getattr(exc, "problem_mark", None) else None
        raise InputError(at(path, line, f"invalid YAML: {getattr(exc, 'problem', exc)}")) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise InputError(at(path, 1, "a models file is a mapping with a 'targets:' key"))
    targets_node = _key(root, "targets")
    if targets_node is None or not isinstance(targets_node, yaml.MappingNode):
        raise InputError(
            at(path, root.start_mark.line + 1, "expected 'targets:' holding a mapping")
        )
    problems: list[str] = []
    targets = {}
    for key_node, value_node in targets_node.value:
        target = _target(path, key_node, value_node, problems)
        if target:
            targets[target.name] = target
    if problems:
        raise InputError(problems)
    return targets


def _key(node: yaml.MappingNode, name: str) -> yaml.Node | None:
    for key_node, value_node in node.value:
        if key_node.value == name:
            return value_node
    return None


def _target(path: str, key_node: yaml.Node, node: yaml.Node, problems: list[str]) -> Target | None:
    name, line = str(key_node.value), key_node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        problems.append(at(path, line, f"target '{name}' must be a mapping"))
        return None
    try:  # values built from the nodes with yaml.safe_load's rules: no tags that run code
        data = SafeConstructor().construct_document(node)
    except yaml.YAMLError as exc:
        bad = getattr(exc, "problem_mark", None)
        where = bad.line + 1 if bad else line
        problems.append(at(path, where, f"target '{name}': {getattr(exc, 'problem', exc)}"))
        return None
    before = len(problems)
    for sub_key, _ in node.value:
        _check_field(path, name, sub_key, data.get(sub_key.value), problems)
    for required in ("provider", "model"):
        if required not in data:
            problems.append(at(path, line, f"target '{name}' needs '{required}'"))
    if len(problems) > before:
        return None
    data.setdefault("base_url", DEFAULT_BASE_URL[data["provider"]])
    if data.get("mock") is None:
        data.setdefault("api_key_env", DEFAULT_KEY_ENV[data["provider"]])
    return Target(name=name, **data)


def _check_field(path: str, name: str, key: yaml.Node, value: Any, problems: list[str]) -> None:
    line, field_name = key.start_mark.line + 1, str(key.value)
    if field_name not in FIELDS:
        close = difflib.get_close_matches(field_name, FIELDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.append(at(path, line, f"unknown key '{field_name}' in target '{name}'{hint}"))
    elif not isinstance(value, TYPES[field_name]) or (
        isinstance(value, bool) and bool not in TYPES[field_name]
    ):
        kind = " or ".join(t.__name__ for t in TYPES[field_name])
        problems.append(at(path, line, f"'{field_name}' of target '{name}' must be {kind}"))
    elif field_name == "provider" and value not in PROVIDERS:
        problems.append(
            at(path, line, f"unknown provider '{value}'; use one of {', '.join(PROVIDERS)}")
        )
    elif field_name == "auth" and value not in AUTH_MODES:
        problems.append(
            at(path, line, f"unknown auth '{value}'; use one of {', '.join(AUTH_MODES)}")
        )
    elif field_name == "mock" and set(value) - mock_fields():
        unknown, known = ", ".join(sorted(set(value) - mock_fields())), sorted(mock_fields())
        problems.append(at(path, line, f"unknown mock option {unknown}; use {', '.join(known)}"))
    elif field_name in ("concurrency", "max_retries") and value < (
        1 if field_name == "concurrency" else 0
    ):
        problems.append(
            at(path, line, f"'{field_name}' of target '{name}' is out of range: {value}")
        )


def resolve(
    names: list[str], models: dict[str, Target], base_url: str | None = None
) -> list[Target]:
    """Targets for the -m names, keys read from the environment; errors exit 2."""
    targets, problems = [], []
    for name in names:
        try:
            target = _lookup(name, models, base_url)
            target.key = _read_key(target)
            targets.append(target)
        except InputError as exc:
            problems.extend(exc.problems)
    if len({t.name for t in targets}) < len(targets):
        problems.append("the same target is named twice with -m")
    if problems:
        raise InputError(problems)
    return targets


def _lookup(name: str, models: dict[str, Target], base_url: str | None) -> Target:
    if name in models:
        return dataclasses.replace(models[name])
    if name in BUILTIN:
        return builtin(name)
    provider, sep, model = name.partition(":")
    if sep and provider in PROVIDERS and model:
        url = base_url or DEFAULT_BASE_URL[provider]
        return Target(name, provider, model, base_url=url, api_key_env=DEFAULT_KEY_ENV[provider])
    known = ", ".join([*models, *BUILTIN])
    raise InputError(
        f"unknown target '{name}': use a name from the models file or a built-in ({known}), "
        f"or PROVIDER:MODEL with PROVIDER one of {', '.join(PROVIDERS)}"
    )


def _read_key(target: Target) -> str | None:
    if not target.api_key_env:
        return None
    key = os.environ.get(target.api_key_env)
    if not key:
        raise InputError(
            f"target '{target.name}' reads its API key from the environment variable "
            f"{target.api_key_env}, which is not set; export it (keys are never read from files)"
        )
    return key


def provider_for(target: Target) -> Provider:
    """The one way to build a target's protocol adapter (for requests and for --dry-run)."""
    return PROVIDERS[target.provider](target.base_url, target.model, target.key, target.auth)
