"""Targets: the models file, the built-in mock targets, keys from the environment."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node

from runner.client.providers import PROVIDERS, Provider
from runner.cost import price_problem
from runner.errors import InputError
from runner.spec.ranges import MOCK
from runner.spec.ranges import TARGET as RANGES
from runner.spec.yamlnodes import Bad, Problems, Reader, json_only, node_line, read_documents

NAME = "[A-Za-z_][A-Za-z0-9_]*"
ENV_NAME = re.compile(rf"\$\{{({NAME})\}}|\$?({NAME})")  # $NAME and ${NAME} are read as NAME
# a value pasted where a variable's name goes: a known key prefix, or long and of mixed case
# with digits as no variable name is
KEYLIKE = re.compile(r"(sk-|AIza)\S*|(?=.*\d)(?=.*[a-z])(?=.*[A-Z])[A-Za-z0-9_-]{24,}")


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
    cache: bool = False  # mark the prompt for the server's cache (providers with cache marks)
    params: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 32
    rpm: float | None = None
    tpm: float | None = None
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float | None = None
    idle_timeout_s: float = 30.0  # no byte for this long once a response began: retried; 0 off
    max_response_mb: float = 32.0  # a response (decompressed) or SSE line larger: malformed
    max_retries: int = 6
    max_wait_s: float = 60.0
    fail_fast_after: int = 5  # identical final failures from the start that stop it (0: never)
    price: dict[str, float] | None = None
    batch: bool = False  # turns go in rounds through the provider's Batch API
    batch_poll_s: float = 30.0  # how often a batch out is polled
    batch_price_factor: float = 0.5  # what a batch costs of the price (cost, --max-cost)
    mock: dict[str, Any] | None = None  # options of an in-process mock server
    key: str | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        """The target as written to the manifest: everything but the key."""
        data = dataclasses.asdict(self)
        data.pop("key")
        return data


# built-in targets, each provider's own against the in-process mock: name -> (provider, model)
BUILTIN = {cls.mock_target[0]: (cls.name, cls.mock_target[1]) for cls in PROVIDERS.values()}
FIELDS = tuple(f.name for f in dataclasses.fields(Target) if f.name not in ("name", "key"))
TYPES: dict[str, tuple[type, ...]] = {
    "provider": (str,), "model": (str,), "base_url": (str,), "api_key_env": (str,),
    "auth": (str,), "stream": (bool,), "params": (dict,), "concurrency": (int,),
    "rpm": (int, float), "tpm": (int, float), "timeout_s": (int, float),
    "connect_timeout_s": (int, float), "first_byte_timeout_s": (int, float),
    "idle_timeout_s": (int, float), "max_response_mb": (int, float),
    "max_retries": (int,), "max_wait_s": (int, float), "price": (dict,), "mock": (dict,),
    "fail_fast_after": (int,), "cache": (bool,), "batch": (bool,),
    "batch_poll_s": (int, float), "batch_price_factor": (int, float),
}  # fmt: skip


def mock_base_url(provider: str, server_url: str) -> str:
    """The base URL a provider uses against the mock server at server_url."""
    return PROVIDERS[provider].mock_base_url(server_url)


def mock_fields() -> set[str]:
    """Options a target may give its in-process mock server (imported only when used)."""
    from runner.mock import MockOptions

    return {f.name for f in dataclasses.fields(MockOptions)} - {"record"}


def builtin(name: str) -> Target:
    provider, model = BUILTIN[name]
    return Target(name, provider, model, concurrency=1000, max_wait_s=5.0, mock={},
                  batch_poll_s=0.1)  # fmt: skip


def load_models(path: str) -> dict[str, Target]:
    """Read a models file ({targets: {name: {...}}}); errors name file and line."""
    return load_models_file(path)[0]


def load_models_file(path: str) -> tuple[dict[str, Target], str | None]:
    """The targets of a models file and its top-level `cache:` folder (the reply cache,
    relative to the models file; None when not set); errors name file and line."""
    problems = Problems()
    r = Reader(problems, path)
    targets_node, cache = _targets_node(r, read_documents(path, problems))
    targets = {}
    if targets_node is not None:
        for name, (key_node, node) in r.entries(targets_node, "targets", None, merges=True).items():
            try:
                target = _target(r, name, key_node, node)
            except Bad as e:
                r.report(e.line, e.message)
                continue
            if target is not None:
                targets[name] = target
    problems.raise_any()
    if cache is not None and not os.path.isabs(cache):
        cache = os.path.join(os.path.dirname(path), cache)
    return targets, cache


def _targets_node(r: Reader, documents: list[Node]) -> tuple[MappingNode | None, str | None]:
    """The 'targets:' mapping of the file's one document (None when it is not there) and
    its top-level 'cache:' folder."""
    if r.count():  # the file could not be read, or is not YAML
        return None, None
    if len(documents) > 1:
        r.report(node_line(documents[1]), "a models file holds one YAML document")
        return None, None
    root = documents[0] if documents else None
    if not isinstance(root, MappingNode):
        r.report(node_line(root) if root else 1, "a models file is a mapping with a 'targets:' key")
        return None, None
    # other top-level keys are left alone: they may hold anchors (&name) that targets merge
    top = r.entries(root, "models file", None, merges=True)
    cache = (
        r.fields({"cache": top["cache"]}, {"cache": _cache}).get("cache")
        if "cache" in top
        else None
    )
    targets = top["targets"][1] if "targets" in top else None
    if not isinstance(targets, MappingNode):
        r.report(node_line(root), "expected 'targets:' holding a mapping")
        return None, cache
    return targets, cache


def _cache(r: Reader, node: Node, key: str) -> str | None:
    """The models file's `cache:`: the reply cache's folder (runner/client/cache.py), or null."""
    value = r.value(node)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise Bad(node, "'cache' must be a folder (the reply cache) or null")
    return value


def _target(r: Reader, name: str, key_node: Node, node: Node) -> Target | None:
    """One target, or None when a problem was reported."""
    if not isinstance(node, MappingNode):
        raise Bad(key_node, f"target '{name}' must be a mapping")
    start = r.count()
    entries = r.entries(node, f"target '{name}'", FIELDS, merges=True)
    data = r.fields(entries, dict.fromkeys(entries, partial(_field, target=name)))
    for required in ("provider", "model"):
        if required not in entries:
            r.report(node_line(key_node), f"target '{name}' needs '{required}'")
    if r.count() > start:
        return None
    provider = PROVIDERS[data["provider"]]
    if data.get("auth") is not None and data["auth"] not in provider.auth_modes:
        raise Bad(entries["auth"][1], _auth_problem(name, provider, data["auth"]))
    if data.get("cache") and not provider.capabilities.cache_marks:
        raise Bad(entries["cache"][1], _cache_problem(name, provider))
    if data.get("batch") and not provider.capabilities.batch:
        raise Bad(entries["batch"][1], batch_problem(name, provider.name))
    data.setdefault("base_url", provider.default_base_url)
    if data.get("mock") is None:
        data.setdefault("api_key_env", provider.key_env)
    return Target(name=name, **data)


def _auth_problem(target: str, provider: type[Provider], auth: str) -> str:
    """An auth mode the target's provider does not take: the modes it takes, and the
    closest of them when there is one."""
    modes = provider.auth_modes
    close = difflib.get_close_matches(auth, modes, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    takes = " or ".join(modes) if len(modes) < 3 else f"{', '.join(modes[:-1])} or {modes[-1]}"
    return f"target '{target}': provider {provider.name} takes auth {takes}, not '{auth}'{hint}"


def _cache_problem(target: str, provider: type[Provider]) -> str:
    """`cache: true` on a provider that has no cache marks to set."""
    able = " or ".join(n for n, cls in PROVIDERS.items() if cls.capabilities.cache_marks)
    return (
        f"target '{target}': cache: true marks the prompt for providers with cache marks "
        f"({able}); provider {provider.name} has none (it caches long prefixes on its own, "
        "or not at all)"
    )


def batch_problem(target: str, provider: str) -> str:
    """`batch: true` on a provider without a Batch API here."""
    able = " or ".join(n for n, cls in PROVIDERS.items() if cls.capabilities.batch)
    return (
        f"target '{target}': batch: true sends rounds through a provider's Batch API "
        f"({able}); provider {provider} has none here, so its turns cannot ride a batch"
    )


def _field(r: Reader, node: Node, key: str, target: str) -> Any:
    """One field of a target, built from its node (yaml.safe_load's rules) and checked."""
    value, types = r.value(node), TYPES[key]
    if key == "api_key_env":
        return key_env_name(value, node, target)
    if not _of_type(value, types):
        kind = " or ".join(t.__name__ for t in types)
        raise Bad(node, f"'{key}' of target '{target}' must be {kind}")
    if key == "provider" and value not in PROVIDERS:
        raise Bad(node, f"unknown provider '{value}'; use one of {', '.join(PROVIDERS)}")
    if key == "base_url" and (problem := url_problem(value)):
        raise Bad(node, f"'base_url' of target '{target}' {problem}")
    if key == "mock" and set(value) - mock_fields():
        unknown, known = ", ".join(sorted(set(value) - mock_fields())), sorted(mock_fields())
        raise Bad(node, f"unknown mock option {unknown}; use {', '.join(known)}")
    if key == "price" and (problem := price_problem(value)):
        raise Bad(node, f"target '{target}': {problem}")
    if key in RANGES and not RANGES[key].holds(value):
        raise Bad(node, f"'{key}' of target '{target}' must be {RANGES[key].text()}, got {value}")
    if key == "mock":
        _mock_numbers(value, node, target)
    if key in ("params", "mock", "price"):
        json_only(
            node, f"'{key}' of target '{target}'"
        )  # sent, or written to the manifest, as it is
    return value


def key_env_name(value: Any, node: Node, target: str) -> str | None:
    """The variable api_key_env names (null: no key, no auth header). A value that is no
    variable name is refused without being shown: it is most often the key itself."""
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else ""
    name, pasted = ENV_NAME.fullmatch(text), KEYLIKE.fullmatch(text)
    if name and not pasted:
        return name.group(1) or name.group(2)
    why = (
        "this looks like a key, not a variable name"
        if pasted
        else "that is not the name of an environment variable (letters, digits and _) or null"
    )
    raise Bad(node, f"'api_key_env' of target '{target}': {why} (the value is not shown); "
              "put the key in an environment variable (export MY_KEY=...) and name it here: "
              "api_key_env: MY_KEY")  # fmt: skip


def url_problem(url: str) -> str | None:
    """What is wrong with a base URL (an http or https scheme and a host), or None."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "holds a space or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        if not parts.scheme or "." in parts.scheme or not parts.netloc:
            return f"has no http:// or https:// in front: write https://{url}"
        return f"must start with http:// or https://, not {parts.scheme}://"
    if not parts.hostname:
        return "has no host: write it as https://HOST/PATH"
    return None


def _mock_numbers(options: dict[str, Any], node: Node, target: str) -> None:
    """The mock's numeric options, in the ranges its command line takes."""
    from runner.mock.limits import HEADER_MODES

    for name, value in options.items():
        if name == "limit_headers" and value not in HEADER_MODES:
            raise Bad(node, f"mock option 'limit_headers' of target '{target}' must be "
                      f"one of {', '.join(HEADER_MODES)}, got {value!r}")  # fmt: skip
        if name in MOCK and not MOCK[name].holds(value):
            want = MOCK[name].text()
            raise Bad(
                node, f"mock option '{name}' of target '{target}' must be {want}, got {value}"
            )


def _of_type(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that a bool is not taken for a number."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def resolve(
    names: list[str],
    models: dict[str, Target],
    base_url: str | None = None,
    need_keys: bool = True,
) -> list[Target]:
    """Targets for the -m names, keys read from the environment (an unset one is an error
    when need_keys, else left None); errors exit 2."""
    targets, problems = [], []
    if base_url is not None and (problem := url_problem(base_url)):
        problems.append(f"--base-url {problem}")
    for name in names:
        try:
            target = _lookup(name, models, base_url)
            target.key = _read_key(target, need_keys)
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
        cls = PROVIDERS[provider]
        url = base_url or cls.default_base_url
        return Target(name, provider, model, base_url=url, api_key_env=cls.key_env)
    known = ", ".join([*models, *BUILTIN])
    raise InputError(
        f"unknown target '{name}'{_target_hint(name, [*models, *BUILTIN])}: use a name from the "
        f"models file or a built-in ({known}), or PROVIDER:MODEL with PROVIDER one of "
        f"{', '.join(PROVIDERS)}"
    )


def _target_hint(name: str, names: list[str]) -> str:
    """'; did you mean ...?' for a misspelt target name or provider, else nothing."""
    provider, sep, model = name.partition(":")
    close = difflib.get_close_matches(name, names, n=1)
    if not close and sep and model:
        close = [f"{p}:{model}" for p in difflib.get_close_matches(provider, list(PROVIDERS), n=1)]
    return f" (did you mean '{close[0]}'?)" if close else ""


def with_key(target: Target, required: bool = True) -> Target:
    """The target with its key read from this process's environment (a Ray worker's own)."""
    return dataclasses.replace(target, key=_read_key(target, required))


def _read_key(target: Target, required: bool) -> str | None:
    """The key from the environment, surrounding whitespace (a pasted newline) stripped; one
    holding a control character or a character outside ASCII is refused, not shown."""
    if not target.api_key_env:
        return None
    key = os.environ.get(target.api_key_env, "").strip()
    if key and not (key.isascii() and key.isprintable()):
        raise InputError(
            f"target '{target.name}': the key in {target.api_key_env} holds a control character "
            "or a character outside ASCII (the key is not shown); set it again, as the bare key"
        )
    if not key and required:
        raise InputError(
            f"target '{target.name}' reads its API key from the environment variable "
            f"{target.api_key_env}, which is not set (or blank); export it (keys are never read "
            "from files)"
        )
    return key or None


def provider_for(target: Target) -> Provider:
    """The one way to build a target's protocol adapter (for requests and for --dry-run)."""
    return PROVIDERS[target.provider](target.base_url, target.model, target.key, target.auth)
