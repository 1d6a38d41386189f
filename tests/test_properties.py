"""Property tests: the SSE reader under any chunking, the loaders under any input."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.client.providers.sse import SSEParser
from runner.errors import InputError
from runner.spec.scenarios import load_paths
from runner.spec.targets import load_models

# the profile's (tests/conftest.py: no speed checks), and tmp_path reused across examples
FIXTURES_TOO = [*settings.default.suppress_health_check, HealthCheck.function_scoped_fixture]
texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30
)
events = st.lists(st.tuples(st.sampled_from(["", "message", "response.output_text.delta"]), texts),
                  min_size=1, max_size=8)  # fmt: skip


def encode(evts: list[tuple[str, str]], newline: str) -> bytes:
    out = []
    for name, data in evts:
        if name:
            out.append(f"event: {name}{newline}")
        out.append(f": keep-alive{newline}data: {data}{newline}{newline}")
    return "".join(out).encode()


@given(events, st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_sse_parser_gives_the_same_events_whatever_the_chunk_boundaries(evts, newline, data):
    raw = encode(evts, newline)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    parser, got, start = SSEParser(), [], 0
    for cut in [*cuts, len(raw)]:
        got += parser.feed(raw[start:cut])
        start = cut
    got += parser.close()
    assert got == [(name, text) for name, text in evts]


@given(st.lists(st.dictionaries(st.sampled_from(["id", "content", "x"]), texts, max_size=3),
                min_size=1, max_size=5))  # fmt: skip
def test_sse_json_payloads_survive_byte_level_splits(payloads):
    raw = "".join(f"data: {json.dumps(p, ensure_ascii=False)}\n\n" for p in payloads).encode()
    parser = SSEParser()
    got = []
    for i in range(len(raw)):  # one byte at a time: UTF-8 characters split everywhere
        got += parser.feed(raw[i : i + 1])
    assert [json.loads(d) for _, d in got] == payloads


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "turns",
                    "user",
                    "assistant",
                    "expect",
                    "vars",
                    "context",
                    "window",
                    "repeat",
                    "min_pass_rate",
                    "system",
                    "scenarios",
                    "defaults",
                    "contains",
                    "regex",
                    "params",
                    "tags",
                    "targets",
                    "provider",
                    "model",
                ]
            ),
            inner,
            max_size=5,
        )
    ),  # fmt: skip
    max_leaves=20,
)


@settings(max_examples=200, suppress_health_check=FIXTURES_TOO)
@given(yaml_values)
def test_any_yaml_loads_or_fails_with_an_input_error(tmp_path: Path, value):
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(value, allow_unicode=True), encoding="utf-8")
    for loader in (lambda: load_paths([str(path)]), lambda: load_models(str(path))):
        try:
            loader()
        except InputError as exc:
            assert all(p.startswith(str(path)) for p in exc.problems), exc.problems


@settings(max_examples=200, suppress_health_check=FIXTURES_TOO)
@given(st.binary(max_size=200))
def test_any_bytes_load_or_fail_with_an_input_error(tmp_path: Path, raw):
    path = tmp_path / "random.yaml"
    path.write_bytes(raw)
    for loader in (lambda: load_paths([str(path)]), lambda: load_models(str(path))):
        with contextlib.suppress(InputError):
            loader()


def test_no_hypothesis_test_depends_on_speed():
    """Every property test of the suite runs without a deadline or the too_slow check."""
    import tests.test_vars_file

    tests_here = [*globals().values(), *vars(tests.test_vars_file).values()]
    given_tests = [t for t in tests_here if hasattr(t, "hypothesis")]
    assert len(given_tests) >= 5
    for test in given_tests:
        chosen = test._hypothesis_internal_use_settings
        assert chosen.deadline is None and HealthCheck.too_slow in chosen.suppress_health_check
