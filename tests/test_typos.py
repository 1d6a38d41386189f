"""What a user gets wrong: a misspelt target, --base-url where it does not apply, `validate .`
in a project folder, a literal {{name}}, a judge check without a judge target."""

from __future__ import annotations

from conftest import cli, play, write_scenario

ONE = "id: s\nturns: [hi]\n"


def test_a_misspelt_target_gets_a_did_you_mean(tmp_path, mock_server):
    builtin = play(tmp_path, ONE, "--dry-run", targets=("mock-gemeni",))
    assert builtin.result.exit_code == 2
    assert "unknown target 'mock-gemeni' (did you mean 'mock-gemini'?)" in builtin.result.stderr
    provider = play(tmp_path, ONE, "--dry-run", targets=("openai-caht:gpt-4o",))
    assert "(did you mean 'openai-chat:gpt-4o'?)" in provider.result.stderr
    named = play(tmp_path, ONE, server=mock_server, targets=("chta",))
    assert named.result.exit_code == 2 and "(did you mean 'chat'?)" in named.result.stderr
    assert mock_server.requests == []


def test_base_url_is_refused_for_built_in_and_models_file_targets(tmp_path, mock_server):
    url = mock_server.base_url + "/v1"
    for target, where in (("mock", {}), ("chat", {"server": mock_server})):
        played = play(tmp_path, ONE, "--base-url", url, targets=(target,), **where)
        assert played.result.exit_code == 2, played.result.output
        assert f"--base-url applies to PROVIDER:MODEL targets only; {target}" in (
            played.result.stderr
        )
    assert mock_server.requests == []
    given = play(
        tmp_path, ONE, "--base-url", url, targets=("openai-chat:m1",), env={"OPENAI_API_KEY": "k"}
    )
    assert given.result.exit_code == 0, given.result.output
    assert [r["json"]["model"] for r in mock_server.requests] == ["m1"]  # where it was sent


def test_validate_skips_hidden_folders_and_virtual_environments(tmp_path):
    write_scenario(tmp_path / "a.yaml", ONE)
    broken = "not: [a scenario\n"
    for folder in (".venv/lib", ".github/workflows", "env", "conda/envs/x"):
        (tmp_path / folder).mkdir(parents=True)
        write_scenario(tmp_path / folder / "broken.yaml", broken)
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n", encoding="utf-8")
    (tmp_path / "conda/envs/x/conda-meta").mkdir()
    (tmp_path / "more").mkdir()
    write_scenario(tmp_path / "more" / "b.yaml", ONE.replace("id: s", "id: b"))
    result = cli("validate", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "2 scenarios OK"
    hidden = cli("validate", tmp_path / ".github")  # named on the command line: read
    assert hidden.exit_code == 2 and "broken.yaml" in hidden.stderr


ESCAPED = r"""
id: esc
system: Keep \{{name}} as it is.
turns:
  - user: 'I am {{name}}; write \{{name}} and \{{ other }} as they are.'
    expect: {contains: ['\{{name}}']}
vars: {name: [Ann]}
"""


def test_a_backslash_keeps_double_braces_literal(tmp_path, mock_server):
    assert cli("validate", write_scenario(tmp_path / "e.yaml", ESCAPED)).exit_code == 0
    played = play(tmp_path, ESCAPED, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    messages = mock_server.requests[0]["json"]["messages"]
    assert messages[0]["content"] == "Keep {{name}} as it is."
    assert messages[1]["content"] == "I am Ann; write {{name}} and {{ other }} as they are."
    (turn,) = played.transcripts[0]["turns"]
    assert "{{name}}" in turn["assistant"] and turn["checks"][0]["passed"]  # the check's too


JUDGED = 'id: j\nturns:\n  - user: hi\n    expect: {judge: "says \\"hi\\""}\n'


def test_validate_refuses_a_judge_check_without_a_judge_target(tmp_path):
    path = write_scenario(tmp_path / "j.yaml", JUDGED)
    refused = cli("validate", path)
    assert refused.exit_code == 2
    assert f"{path}:4: this judge check names no target" in refused.stderr
    assert "--judge TARGET" in refused.stderr
    assert cli("validate", path, "--judge", "mock").exit_code == 0
