"""Servers that are not there, base URLs and keys that are wrong: each found early, said
clearly (host and file:line named, the key never shown), and never retried for minutes."""

from __future__ import annotations

import socket

import pytest

from runner.client.providers.base import mask
from tests.conftest import KEY, play, raw_response

HI = "id: s\nturns: [hi]\n"


def models(base_url: str, *lines: str, key_env: str = "TEST_API_KEY") -> str:
    """A models file of one target 'chat' (fast backoff), and the given lines of it."""
    return "\n".join(
        ["targets:", "  chat:", "    provider: openai-chat", "    model: m",
         f"    base_url: {base_url}", f"    api_key_env: {key_env}", "    max_wait_s: 0.05",
         *(f"    {line}" for line in lines)]
    )  # fmt: skip


def free_port() -> int:
    """A loopback port where nothing listens: bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- nobody answers


@pytest.fixture(params=["refused", "dns", "tls"])
def nobody(request, mock_server) -> tuple[str, str]:
    """A base URL nobody answers, and the host:port its message names."""
    if request.param == "refused":
        port = free_port()
        return f"http://127.0.0.1:{port}/v1", f"127.0.0.1:{port}"
    if request.param == "dns":
        return "http://nothere.invalid/v1", "nothere.invalid:80"
    where = mock_server.base_url.removeprefix("http://")  # https to a plain-HTTP server
    return f"https://{where}/v1", where


def test_a_target_nobody_answers_stops_after_fail_fast_attempts(tmp_path, nobody):
    base_url, where = nobody
    played = play(tmp_path, HI, "--repeat", "10", "-c", "1",
                  models=models(base_url, "fail_fast_after: 3"))  # fmt: skip
    assert played.result.exit_code == 3
    # counted attempt by attempt: the first conversation's third attempt opened the breaker
    assert [u["status"] for u in played.usage] == ["connection"] * 3
    assert [u["attempt"] for u in played.usage] == [1, 2, 3]
    errors = [t["error"] for t in played.transcripts]
    assert len(errors) == 10 and all(e["kind"] == "connection" for e in errors)
    assert all(e["message"].startswith("not sent: chat failed 3 times") for e in errors)
    assert f"cannot connect to {where}: " in played.result.output
    assert KEY not in played.result.output + played.report().output
    assert all(KEY not in p.read_text(encoding="utf-8") for p in played.run_dir.iterdir())


def test_a_connect_timeout_is_retried_but_does_not_stop_the_target(tmp_path):
    # a listening socket that never accepts, its backlog filled: later connects get no
    # answer at all (a server too busy to accept), which is not a server that is not there
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        while True:  # connect until one gets no answer: the backlog is full
            sock = socket.socket()
            sock.settimeout(0.2)
            fillers.append(sock)
            try:
                sock.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        try:
            played = play(tmp_path, HI, "--repeat", "4", "-c", "1", "--max-retries", "1",
                          models=models(f"http://127.0.0.1:{port}/v1", "fail_fast_after: 3",
                                        "connect_timeout_s: 0.2"))  # fmt: skip
        finally:
            for sock in fillers:
                sock.close()
    assert played.result.exit_code == 3
    # every conversation made its two attempts: no breaker opened after three
    assert [u["status"] for u in played.usage] == ["connection"] * 8
    assert all("no answer within connect_timeout_s" in t["error"]["message"]
               for t in played.transcripts)  # fmt: skip


def test_conversations_in_flight_add_at_most_one_attempt_each(tmp_path):
    port = free_port()
    played = play(tmp_path, HI, "--repeat", "40", "-c", "8",
                  models=models(f"http://127.0.0.1:{port}/v1", "fail_fast_after: 3"))  # fmt: skip
    assert played.result.exit_code == 3
    assert 3 <= len(played.usage) <= 3 + 7  # the 3 counted, and those already past the check
    assert len(played.transcripts) == 40
    assert "connection refused" in played.result.output


def test_the_messages_of_unreachable_servers_name_host_and_cause(tmp_path, mock_server):
    port = free_port()
    https = "https://" + mock_server.base_url.removeprefix("http://") + "/v1"
    cases = {
        f"http://127.0.0.1:{port}/v1": f"cannot connect to 127.0.0.1:{port}: connection refused",
        "http://nothere.invalid:8080/v1": "cannot connect to nothere.invalid:8080: the host name",
        https: "the TLS handshake failed",
    }
    for base_url, said in cases.items():
        played = play(tmp_path, HI, "--max-retries", "0",
                      models=models(base_url, "fail_fast_after: 0"))  # fmt: skip
        assert played.result.exit_code == 3
        (record,) = played.transcripts
        assert record["error"]["kind"] == "connection" and said in record["error"]["message"]
    assert mock_server.state.answered == 0


# ---------------------------------------------------------------- base URLs


@pytest.mark.parametrize(
    ("base_url", "said"),
    [("api.openai.com/v1", "has no http:// or https:// in front: write https://api.openai.com/v1"),
     ("localhost:8000/v1", "has no http:// or https:// in front"),
     ("ftp://host/v1", "must start with http:// or https://, not ftp://"),
     ("https:///v1", "has no host"), ("http://host:99999/v1", "is not a URL"),
     ("'https://api.openai.com/v1 '", "holds a space or a control character")],
)  # fmt: skip
def test_a_base_url_that_is_no_http_url_is_bad_input(tmp_path, mock_server, base_url, said):
    text = models(mock_server.base_url + "/v1") + "\n  other:\n    provider: openai-chat\n"
    text += f"    model: m\n    base_url: {base_url}\n"
    played = play(tmp_path, HI, targets=("chat", "other"), models=text)
    assert played.result.exit_code == 2
    assert f"models.yaml:11: 'base_url' of target 'other' {said}" in played.result.output
    assert mock_server.state.answered == 0 and "Traceback" not in played.result.output


def test_a_base_url_flag_without_scheme_is_bad_input(tmp_path):
    played = play(tmp_path, HI, "--base-url", "api.openai.com/v1",
                  targets=("openai-chat:gpt-4o-mini",))  # fmt: skip
    assert played.result.exit_code == 2
    assert "--base-url has no http:// or https:// in front" in played.result.output


def test_a_404_names_the_url_it_called(tmp_path, mock_server):
    wrong = mock_server.base_url + "/wrong/v1"
    played = play(tmp_path, HI, models=models(wrong))
    assert played.result.exit_code == 3
    message = played.transcripts[0]["error"]["message"]
    assert f"(POST {wrong}/chat/completions answered 404)" in message


def test_a_404_url_shows_no_key_in_its_query(tmp_path, mock_server):
    text = models(mock_server.base_url + "/wrong", "auth: query").replace("openai-chat", "gemini")
    played = play(tmp_path, HI, models=text)
    assert played.result.exit_code == 3
    message = played.transcripts[0]["error"]["message"]
    assert "/wrong/v1beta/models/m:generateContent?key=*** answered 404)" in message
    assert KEY not in played.result.output + str(played.transcripts)


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("value", "said"),
    [("sk-proj-abcdefGHIJ0123456789klmnop", "this looks like a key, not a variable name"),
     ("AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "this looks like a key, not a variable name"),
     ("'my key 123'", "that is not the name of an environment variable")],
)  # fmt: skip
def test_a_key_pasted_where_its_variable_goes_is_refused_unshown(
    tmp_path, mock_server, value, said
):
    played = play(tmp_path, HI, models=models(mock_server.base_url + "/v1", key_env=value))
    assert played.result.exit_code == 2
    assert f"models.yaml:6: 'api_key_env' of target 'chat': {said}" in played.result.output
    assert value.strip("'") not in played.result.output
    assert mock_server.state.answered == 0


@pytest.mark.parametrize("written", ["$TEST_API_KEY", "${TEST_API_KEY}", "' TEST_API_KEY '"])
def test_a_variable_written_as_in_a_shell_is_read(tmp_path, make_mock, written):
    server = make_mock(require_key=KEY)
    played = play(tmp_path, HI, models=models(server.base_url + "/v1", key_env=written))
    assert played.result.exit_code == 0, played.result.output
    assert played.manifest["targets"][0]["api_key_env"] == "TEST_API_KEY"


@pytest.mark.parametrize(("provider", "path"), [("openai-chat", "/v1"), ("gemini", "")])
def test_api_key_env_null_sends_no_auth_header(tmp_path, mock_server, provider, path):
    text = models(mock_server.base_url + path, key_env="null").replace("openai-chat", provider)
    played = play(tmp_path, HI, models=text, env={"TEST_API_KEY": None})
    assert played.result.exit_code == 0, played.result.output
    (request,) = mock_server.requests
    assert not {"authorization", "x-goog-api-key"} & set(request["headers"])
    assert request["query"] == {}


@pytest.mark.parametrize("padded", [KEY + "\n", f"  {KEY}\r\n", f"\t{KEY} "])
def test_whitespace_around_a_key_is_stripped(tmp_path, make_mock, padded):
    server = make_mock(require_key=KEY)
    played = play(tmp_path, HI, models=models(server.base_url + "/v1"),
                  env={"TEST_API_KEY": padded})  # fmt: skip
    assert played.result.exit_code == 0, played.result.output
    assert [u["status"] for u in played.usage] == [200]


@pytest.mark.parametrize("bad", ["test-\x01key-123", "test-key\n-123", "tëst-key-123"])
def test_a_key_with_a_control_character_is_refused_unshown(tmp_path, mock_server, bad):
    played = play(tmp_path, HI, models=models(mock_server.base_url + "/v1"),
                  env={"TEST_API_KEY": bad})  # fmt: skip
    assert played.result.exit_code == 2
    assert "the key in TEST_API_KEY holds a control character" in played.result.output
    assert "key-123" not in played.result.output and mock_server.state.answered == 0


def test_a_short_key_is_masked_only_where_it_stands_alone(tmp_path, raw_server):
    assert mask("unexpected x: (x), x-ray", "x") == "unexpected ***: (***), x-ray"
    assert mask("key sk-abcdefgh… is wrong", "sk-abcdefghijklmnop") == "key ***… is wrong"
    body = '{"error": {"message": "unexpected token x in the key x"}}'
    server = raw_server(lambda request: raw_response(body, "400 Bad Request"))
    played = play(tmp_path, HI, models=models(server.base_url + "/v1"), env={"TEST_API_KEY": "x"})
    assert played.result.exit_code == 3
    assert played.transcripts[0]["error"]["message"].startswith(
        "unexpected token *** in the key ***"
    )
