"""Tool loops and images through the runner and the mock: failure kinds, context windows,
scripted results from python, images in each protocol's shape, bad input refused at load
time, and exports that fine-tuning tools load."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import cli, play, read_jsonl
from test_compare import Elements, chromium, needs_browser

PROTOCOLS = ["chat", "responses", "gemini", "anthropic"]
TOOLS = """
tools:
  - name: get_weather
    description: Current weather for a city
    parameters: {type: object, properties: {city: {type: string}}}
  - name: refund
    description: Refund an order
    parameters: {type: object, properties: {order_id: {type: string}}}
"""
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def scenario(body: str, **extra: str) -> str:
    head = "".join(f"{k}: {v}\n" for k, v in extra.items())
    return f"id: s\n{head}{TOOLS}{body}"


@pytest.mark.parametrize("stream", ["--no-stream", "--stream"])
@pytest.mark.parametrize("target", PROTOCOLS)
def test_a_call_with_no_scripted_result_fails_the_turn_as_tool_unscripted(
    tmp_path, mock_server, target, stream
):
    text = scenario(
        "tool_results: {get_weather: sunny}\n"
        'turns:\n  - hello\n  - \'call refund {"order_id": "A7"}\'\n'
    )
    played = play(tmp_path, text, stream, server=mock_server, targets=(target,))
    assert played.result.exit_code == 3, played.result.output
    (record,) = played.transcripts
    assert record["error"]["kind"] == "tool_unscripted"
    assert "'refund'" in record["error"]["message"]
    assert len(record["turns"]) == 1  # the first turn was kept
    assert record["messages"][-1]["tool_calls"][0]["function"]["name"] == "refund"


@pytest.mark.parametrize("target", PROTOCOLS)
def test_a_model_that_keeps_calling_fails_the_turn_as_tool_loop(tmp_path, mock_server, target):
    text = scenario(
        "tool_results: {get_weather: sunny}\nmax_tool_rounds: 2\n"
        'turns:\n  - \'[[tool-loop]] call get_weather {"city": "Rome"}\'\n'
    )
    played = play(tmp_path, text, server=mock_server, targets=(target,))
    assert played.result.exit_code == 3, played.result.output
    (record,) = played.transcripts
    assert record["error"]["kind"] == "tool_loop"
    assert "after 2 rounds" in record["error"]["message"]
    assert [u["request"] for u in played.usage] == [0, 1, 2]  # 2 answered, the third refused


def test_a_window_never_separates_a_call_from_its_results(tmp_path, mock_server):
    text = scenario(
        "tool_results: {get_weather: sunny}\ncontext: {window: 1}\n"
        'turns:\n  - \'call get_weather {"city": "Rome"} call get_weather {"city": "Oslo"}\'\n'
    )
    played = play(tmp_path, text, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    first, second = (r["json"]["messages"] for r in mock_server.requests)
    assert [m["role"] for m in first] == ["user"]
    # the window of 1 grew back to the call: the assistant's calls and both results
    assert [m["role"] for m in second] == ["assistant", "tool", "tool"]
    assert [c["id"] for c in second[0]["tool_calls"]] == [m["tool_call_id"] for m in second[1:]]


def test_results_from_a_python_function_and_a_template(tmp_path, mock_server):
    (tmp_path / "tools_impl.py").write_text(
        "def refund(args, vars):\n    return {'refunded': args['order_id'], 'to': vars['who']}\n"
    )
    text = scenario(
        "vars: {who: [Ann]}\n"
        "tool_results:\n  refund: {python: 'tools_impl:refund'}\n"
        "  get_weather: 'sunny in {{args.city}} for {{who}}'\n"
        'turns:\n  - user: \'call refund {"order_id": "A7"} call get_weather {"city": "Rome"}\'\n'
        "    expect: {contains: ['refunded', 'sunny in Rome for Ann'],"
        " tool_called: [{name: refund, args: {order_id: A7}, times: 1}]}\n"
    )
    played = play(tmp_path, text, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    (turn,) = played.transcripts[0]["turns"]
    assert [c["result"] for c in turn["tool_calls"]] == [
        '{"refunded":"A7","to":"Ann"}',
        "sunny in Rome for Ann",
    ]
    assert [c["passed"] for c in turn["checks"]] == [True, True]


def test_checks_on_calls_fail_with_reasons(tmp_path, mock_server):
    text = scenario(
        "tool_results: {get_weather: sunny}\n"
        'turns:\n  - user: \'call get_weather {"city": "Rome"}\'\n'
        "    expect:\n      tool_called: {name: get_weather, args: {city: Paris}}\n"
        "      no_tool_called: true\n"
    )
    played = play(tmp_path, text, server=mock_server)
    assert played.result.exit_code == 1, played.result.output
    checks = played.transcripts[0]["turns"][0]["checks"]
    assert [(c["kind"], c["passed"]) for c in checks] == [
        ("tool_called", False),
        ("no_tool_called", False),
    ]
    assert "called 0 times" in checks[0]["reason"] and "Rome" in checks[0]["reason"]
    assert checks[1]["reason"] == "called ['get_weather']"


IMAGE_TURNS = """
turns:
  - user:
      - text: What is in these pictures?
      - image: pics/cat.png
      - image: https://example.com/dog.jpg
      - image: "data:image/png;base64,{png}"
    expect: {{contains: ["images: 3"]}}
"""


def image_parts(target: str, body: dict) -> list:
    """The parts of the (only) user message, as the protocol put them."""
    if target == "chat":
        return body["messages"][0]["content"]
    if target == "responses":
        return body["input"][0]["content"]
    if target == "gemini":
        return body["contents"][0]["parts"]
    return body["messages"][0]["content"]


def expected_parts(target: str, png: str) -> list:
    url = f"data:image/png;base64,{png}"
    dog = "https://example.com/dog.jpg"
    text = "What is in these pictures?"
    if target == "chat":
        return [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": u}} for u in (url, dog, url)
        ]
    if target == "responses":
        return [{"type": "input_text", "text": text}] + [
            {"type": "input_image", "image_url": u, "detail": "auto"} for u in (url, dog, url)
        ]
    inline = {"inlineData": {"mimeType": "image/png", "data": png}}
    if target == "gemini":
        dog_part = {"fileData": {"mimeType": "image/jpeg", "fileUri": dog}}
        return [{"text": text}, inline, dog_part, inline]
    base = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    dog_block = {"type": "image", "source": {"type": "url", "url": dog}}
    return [{"type": "text", "text": text}, base, dog_block, base]


@pytest.mark.parametrize("target", PROTOCOLS)
def test_images_reach_the_server_in_each_protocols_shape(tmp_path, mock_server, target):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics/cat.png").write_bytes(PNG)
    png = base64.b64encode(PNG).decode()
    played = play(
        tmp_path, "id: s" + IMAGE_TURNS.format(png=png), server=mock_server, targets=(target,)
    )
    assert played.result.exit_code == 0, played.result.output
    (request,) = mock_server.requests
    assert image_parts(target, request["json"]) == expected_parts(target, png)
    # the records hold references and digests, never the base64
    transcripts = (played.run_dir / "transcripts.jsonl").read_text()
    assert png not in transcripts and "base64" not in transcripts
    (record,) = played.transcripts
    assert record["version"] == 2
    refs = [p["image_url"] for p in record["messages"][0]["content"][1:]]
    assert [r["url"] for r in refs] == [
        "pics/cat.png",
        "https://example.com/dog.jpg",
        "data:image/png",
    ]
    assert refs[0]["sha256"] == refs[2]["sha256"] and "sha256" not in refs[1]
    manifest = played.manifest["files"]
    assert any(f.endswith("pics/cat.png") for f in manifest)


def test_a_changed_image_is_refused_on_resume(tmp_path, mock_server):
    image = tmp_path / "cat.png"
    image.write_bytes(PNG)
    text = "id: s\nturns:\n  - user: [{text: see}, {image: cat.png}]\n  - again\n"
    played = play(tmp_path, text, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    image.write_bytes(PNG + b"\0")
    again = played.resume()
    assert again.result.exit_code == 2 and "cat.png" in again.result.output


def test_changed_python_files_of_results_and_checks_are_refused_on_resume(tmp_path, mock_server):
    """The python files a scenario names are inputs like its images: hashed into run.json."""
    impl, checks = tmp_path / "tools_impl.py", tmp_path / "mychecks.py"
    impl.write_text("def refund(args, vars):\n    return 'done'\n")
    checks.write_text("def ok(reply, turn, conversation):\n    return True\n")
    text = scenario(
        "tool_results:\n  refund: {python: 'tools_impl:refund'}\n"
        "turns:\n  - user: hi\n    expect: {python: 'mychecks:ok'}\n"
    )
    played = play(tmp_path, text, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    hashed = {Path(f).name for f in played.manifest["files"]}
    assert {"tools_impl.py", "mychecks.py"} <= hashed
    for changed in (impl, checks):
        before = changed.read_text()
        changed.write_text(before + "# changed\n")
        again = played.resume()
        assert again.result.exit_code == 2 and changed.name in again.result.output
        changed.write_text(before)


BAD = [
    ("missing image", "turns:\n  - user: [{text: hi}, {image: no/such.png}]\n", 3,
     "image no/such.png: cannot read"),
    ("not an image", "turns:\n  - user: [{image: s.yaml}]\n", 3, "not a png, jpeg, gif or webp"),
    ("http image", "turns:\n  - user: [{image: 'http://x.org/a.png'}]\n", 3, "an https:// URL"),
    ("bad data url", "turns:\n  - user: [{image: 'data:text/plain;base64,aGk='}]\n", 3,
     "a data: URL must be"),
    ("unknown tool result", TOOLS + "tool_results: {get_wether: 1}\nturns: [hi]\n", 10,
     "'tool_results' names 'get_wether', not a tool of this scenario (tools: get_weather, refund)"),
    ("tool without parameters", "tools:\n  - name: t\ntool_results: {t: 1}\nturns: [hi]\n", 3,
     "a tool needs 'parameters'"),
    ("tool turn without call", "turns:\n  - tool: {name: t, result: 1}\n  - hi\n", 3,
     "tool turn 't' answers no scripted call of it"),
    ("call without result", "turns:\n  - assistant: {tool_calls: [{name: t}]}\n  - hi\n", 3,
     "the scripted call of 't' has no tool turn answering it"),
    ("bad python result", TOOLS + "tool_results: {refund: {python: 'nope:f'}}\nturns: [hi]\n", 10,
     "'python': no file nope.py beside the scenario"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_tool_and_image_input_is_refused_before_anything_is_sent(
    tmp_path, mock_server, text, line, message
):
    played = play(tmp_path, "id: s\n" + text, server=mock_server)
    assert played.result.exit_code == 2, played.result.output
    assert f"s.yaml:{line}: " in played.result.output and message in played.result.output
    assert mock_server.requests == []


EXPORTED = """
id: trip
system: Be brief.
tools:
  - name: get_weather
    description: Current weather for a city
    parameters: {type: object, properties: {city: {type: string}}}
tool_results: {get_weather: {temp_c: 21}}
turns:
  - assistant: {tool_calls: [{name: get_weather, args: {city: Rome}}]}
  - tool: {name: get_weather, result: {temp_c: 25}}
  - assistant: 25 in Rome.
  - 'And call get_weather {"city": "Paris"} call get_weather {"city": "Oslo"}'
"""


def test_the_openai_export_with_tools_loads_in_hugging_face_datasets(
    tmp_path, mock_server, monkeypatch
):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    played = play(tmp_path, EXPORTED, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    out = tmp_path / "train.jsonl"
    assert cli("export", played.run_dir, "--format", "openai", "-o", out).exit_code == 0
    (row,) = read_jsonl(out)
    roles = [m["role"] for m in row["messages"]]
    assert roles == ["system", "assistant", "tool", "assistant", "user", "assistant", "tool",
                     "tool", "assistant"]  # fmt: skip
    calls = row["messages"][5]["tool_calls"]
    assert [m.get("tool_call_id") for m in row["messages"][6:8]] == [c["id"] for c in calls]
    assert row["tools"] == [
        {"type": "function", "function": {"name": "get_weather",
         "description": "Current weather for a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    ]  # fmt: skip
    loaded = datasets.load_dataset("json", data_files=str(out), cache_dir=str(tmp_path / "c"))
    first = loaded["train"][0]
    assert first["messages"][5]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert first["tools"][0]["function"]["name"] == "get_weather"

    share = tmp_path / "share.jsonl"
    assert cli("export", played.run_dir, "--format", "sharegpt", "-o", share).exit_code == 0
    (row,) = read_jsonl(share)
    froms = [t["from"] for t in row["conversations"]]
    assert froms == ["system", "function_call", "observation", "gpt", "human", "function_call",
                     "observation", "gpt"]  # fmt: skip
    assert json.loads(row["conversations"][5]["value"]) == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
    ]
    assert json.loads(row["tools"])[0]["name"] == "get_weather"


def test_tool_replies_are_replayed_from_the_reply_cache(tmp_path, mock_server):
    cache = tmp_path / "cache"
    first = play(tmp_path, EXPORTED, "--cache", cache, server=mock_server, run_id="a")
    assert first.result.exit_code == 0, first.result.output
    sent = len(mock_server.requests)
    again = play(tmp_path, EXPORTED, "--cache", cache, "--cache-only", server=mock_server,
                 run_id="b")  # fmt: skip
    assert again.result.exit_code == 0, again.result.output
    assert len(mock_server.requests) == sent  # nothing sent
    one, two = first.transcripts[0], again.transcripts[0]
    assert one["messages"] == two["messages"]
    assert [t["tool_calls"] for t in one["turns"]] == [t["tool_calls"] for t in two["turns"]]


def test_a_text_only_conversation_keeps_record_version_1(tmp_path, mock_server):
    played = play(tmp_path, "id: s\nturns: [hi]\n", server=mock_server)
    (record,) = played.transcripts
    assert record["version"] == 1 and "tools" not in record
    assert set(record["messages"][0]) == {"role", "content"}


def test_diff_flags_a_changed_tool_call(tmp_path, mock_server):
    base = play(tmp_path, EXPORTED, server=mock_server, run_id="a")
    changed = EXPORTED.replace('"Oslo"', '"Bergen"')
    new = play(tmp_path, changed, server=mock_server, run_id="b", name="s.yaml")
    assert base.result.exit_code == new.result.exit_code == 0
    result = cli("diff", base.run_dir, new.run_dir, "--format", "json", "--text")
    (change,) = json.loads(result.output)["text_changes"]
    assert '-> get_weather({"city":"Oslo"})' in change["before"]
    assert '-> get_weather({"city":"Bergen"})' in change["after"]


GIF = b"GIF89a" + bytes(20)  # the type is known by its first bytes


@pytest.mark.parametrize(
    ("image", "said"),
    [
        ("a.gif", "s.yaml:4: target 'gemini' (gemini) takes no image/gif images (a.gif)"),
        # Gemini's fileData needs a mimeType; an https URL whose name says none cannot give it
        ("'https://example.com/photo?id=3'",
         "s.yaml:4: target 'gemini' (gemini) takes an image by URL only when its name ends"),
    ],
)  # fmt: skip
def test_a_target_that_cannot_take_the_image_refuses_at_load_time(
    tmp_path, mock_server, image, said
):
    (tmp_path / "a.gif").write_bytes(GIF)
    text = f"id: s\nturns:\n  - hi\n  - user: [{{text: see}}, {{image: {image}}}]\n"
    played = play(tmp_path, text, server=mock_server, targets=("chat", "gemini"))
    assert played.result.exit_code == 2, played.result.output
    assert said in played.result.output
    assert mock_server.requests == []
    assert play(tmp_path, text, server=mock_server, targets=("chat",)).result.exit_code == 0


def test_server_context_sends_only_the_results_chained_to_the_call(tmp_path, mock_server):
    text = scenario(
        "tool_results: {get_weather: sunny}\ncontext: server\n"
        'turns:\n  - user: \'call get_weather {"city": "Rome"}\'\n'
        "    expect: {contains: ['tool results: sunny']}\n"
    )
    played = play(tmp_path, text, "--stream", server=mock_server, targets=("responses",))
    assert played.result.exit_code == 0, played.result.output
    first, second = (r["json"] for r in mock_server.requests)
    (call,) = played.transcripts[0]["turns"][0]["tool_calls"]
    assert second["input"] == [
        {"type": "function_call_output", "call_id": call["id"], "output": "sunny"}
    ]
    assert second["previous_response_id"] and "previous_response_id" not in first


@needs_browser
def test_the_compare_page_shows_calls_folded_and_images_as_thumbnails(tmp_path, mock_server):
    (tmp_path / "cat.png").write_bytes(PNG)
    text = (
        EXPORTED
        + "  - user: [{text: and this}, {image: cat.png}, {image: 'https://x.org/a.png'}]\n"
    )
    played = play(tmp_path, text, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    page = tmp_path / "compare.html"
    assert cli("compare", played.run_dir, "--html", page).exit_code == 0
    dom = Elements(chromium(tmp_path, page.as_uri(), "--dump-dom"))
    calls = dom.having("details", "calls")
    assert len(calls) == 1  # the turn that called get_weather twice
    assert "2 tool calls" in "".join(dom.text)
    assert '-> get_weather({"city":"Paris"})' in "".join(dom.text)
    thumbs = dom.having("img", "thumb")
    png = base64.b64encode(PNG).decode()
    assert [(t["alt"], t["src"]) for t in thumbs] == [("cat.png", f"data:image/png;base64,{png}")]
    assert "[image: https://x.org/a.png]" in "".join(dom.text)  # named, never fetched
    # the scripted call and its result are shown as scripted rows
    assert "tool (scripted)" in "".join(dom.text)


def test_a_dry_run_says_an_images_base64_by_its_length(tmp_path, mock_server):
    big = PNG + bytes(3000)
    (tmp_path / "big.png").write_bytes(big)
    text = "id: s\nturns:\n  - user: [{text: see}, {image: big.png}]\n"
    played = play(tmp_path, text, "--dry-run", server=mock_server, targets=("chat", "gemini"))
    assert played.result.exit_code == 0, played.result.output
    n = len(base64.b64encode(big))
    out = played.result.output
    assert f'"url": "data:image/png;base64,<{n:,} characters of base64>"' in out
    assert f'"data": "<{n:,} characters of base64>"' in out
    assert base64.b64encode(big).decode()[:100] not in out and mock_server.requests == []
