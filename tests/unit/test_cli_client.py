"""The command line's API client: an API that goes away is one line for the operator, not a traceback, and
the API's advice is given in the command line's terms. A request sent and not answered is said so, with the ids
that send it again as the same command; an id that is no id never reaches a path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from projections.store import ProjectionStore, make_engine
from smartretry.cli import app
from smartretry.cli_ops import Api, ApiError


def test_an_api_that_stops_answering_while_results_are_awaited_is_one_clear_error() -> None:
    def gone(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    api = Api("http://127.0.0.1:9")
    api.client = httpx.Client(base_url=api.base_url, transport=httpx.MockTransport(gone))
    with pytest.raises(ApiError) as raised:
        api.wait_for("post-1", "cmd-1", timeout=5)
    api.close()
    assert "stopped answering while the results were awaited (ConnectError)" in str(raised.value)
    assert "the command was accepted: `smartretry show post-1`" in str(raised.value)


def test_results_are_awaited_until_what_remains_waits_for_the_platforms_own_time() -> None:
    # Facebook's result is in; Instagram's automatic retry waits an hour: nothing more comes of the command, so the
    # wait ends there, not at its own deadline.
    seen: list[int] = []

    asked: list[httpx.Request] = []

    def detail(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        asked.append(request)
        return httpx.Response(200, json={"id": "post-1", "command": {
            "command_id": "cmd-1", "settled": False, "held": len(seen) >= 2, "response": None}})

    api = Api("http://127.0.0.1:9")
    api.client = httpx.Client(base_url=api.base_url, transport=httpx.MockTransport(detail))
    found = api.wait_for("post-1", "cmd-1", timeout=60)
    api.close()
    assert found is not None and found["command"]["held"] and len(seen) == 2
    # Held as the API tells it for the time this wait has left: a platform's wait of a few seconds is waited out.
    assert 0 < float(asked[-1].url.params["within"]) <= 60


def test_an_api_whose_database_is_away_while_results_are_awaited_says_the_command_was_accepted() -> None:
    def away(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "the database is unavailable (OperationalError): try again shortly"})

    api = Api("http://127.0.0.1:9")
    api.client = httpx.Client(base_url=api.base_url, transport=httpx.MockTransport(away))
    with pytest.raises(ApiError) as raised:
        api.wait_for("post-1", "cmd-1", timeout=5)
    api.close()
    assert str(raised.value).startswith("the command was accepted, but its results cannot be shown just now (the "
                                        "database is unavailable (OperationalError)")
    assert "`smartretry show post-1` in a moment" in str(raised.value)


UNCONFIRMED = ('Kafka did not take command cmd-7 for post post-7 in time (timed out); it may still arrive and be '
               'carried out. Send the same request again with "command_id": "cmd-7" and "post_id": "post-7", which '
               'cannot publish twice (a new command or post id could)')


def test_a_command_kafka_may_still_take_is_sent_again_as_the_cli_says(monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[dict[str, object]] = []

    def unconfirmed(_api: Api, _method: str, _path: str, **kwargs: Any) -> httpx.Response:
        bodies.append(kwargs["json"])
        raise ApiError(f"503: {UNCONFIRMED}", 503, UNCONFIRMED)

    monkeypatch.setattr(Api, "call", unconfirmed)
    line = ["publish", "Autumn sale", "--image-url", "https://cdn.example.com/a.jpg", "--account", "acme"]

    first = CliRunner().invoke(app, line)

    assert first.exit_code == 3, "its fate is unknown, as a request unanswered: not a post that failed (1)"
    # Options this command has: the API's "command_id" and "post_id" are the command line's --command-id and --post-id.
    assert "run the same command line with these added:\n  --command-id cmd-7 --post-id post-7\n" in first.output
    again = CliRunner().invoke(app, [*line, "--command-id", "cmd-7", "--post-id", "post-7"])
    assert again.exit_code == 3
    assert bodies[1] == {**bodies[0], "command_id": "cmd-7", "post_id": "post-7"}


def accepted_then(monkeypatch: pytest.MonkeyPatch, waiting: Callable[..., None]) -> Result:
    """`smartretry publish` against an API that accepts it (202, post post-9, command cmd-9), its results then
    awaited by `waiting`."""
    accepted = {"success": False, "results": {}, "command_id": "cmd-9", "pending": True, "location": "/posts/post-9",
                "note": "accepted: the service carries it out, but its results cannot be shown yet",
                "post": {"id": "post-9", "status": "publishing", "error_message": None}}

    def taken(_api: Api, _method: str, _path: str, **_kwargs: Any) -> httpx.Response:
        return httpx.Response(202, json=accepted)

    monkeypatch.setattr(Api, "call", taken)
    monkeypatch.setattr(Api, "wait_for", waiting)
    return CliRunner().invoke(app, PUBLISH, env={"COLUMNS": "200"})


@pytest.mark.parametrize("failure", [
    ApiError("the command was accepted, but its results cannot be shown just now (the database is unavailable): "
             "`smartretry show post-9` in a moment", 503),
    ApiError("the API at http://127.0.0.1:9 stopped answering while the results were awaited (ConnectError); the "
             "command was accepted: `smartretry show post-9` once the service is back"),
], ids=["database-away", "api-gone"])
def test_a_publish_accepted_whose_results_cannot_be_read_is_still_publishing_not_a_failure(
        monkeypatch: pytest.MonkeyPatch, failure: ApiError) -> None:
    def away(_api: Api, _post_id: str, _command_id: str, _timeout: float, _progress: Any = None) -> None:
        raise failure

    done = accepted_then(monkeypatch, away)

    # Not 1: a script that publishes again on failure would publish the post twice.
    assert done.exit_code == 0, done.output
    assert "the command was accepted" in done.output
    assert "run the same command line with these added:\n  --command-id cmd-9 --post-id post-9\n" in done.output
    assert "Still publishing" in done.output


def answered_202_without_waiting(monkeypatch: pytest.MonkeyPatch, accepted: dict[str, Any],
                                 argv: list[str]) -> Result:
    """The CLI run with `argv` against an API that answers its command 202 with `accepted` (then cannot show the post's
    detail); waiting for the results fails the test: what the answer says is held back for up to an hour."""
    def answer(_api: Api, method: str, _path: str, **_kwargs: Any) -> httpx.Response:
        if method == "POST":
            return httpx.Response(202, json=accepted)
        raise ApiError("stopped here: the post's detail", 500)

    def waits(*_args: Any) -> None:
        raise AssertionError("waited for results held back for up to an hour")

    monkeypatch.setattr(Api, "call", answer)
    monkeypatch.setattr(Api, "wait_for", waits)
    return CliRunner().invoke(app, argv, env={"COLUMNS": "200"})


def test_a_command_queued_behind_automatic_retries_is_said_at_once_not_after_the_whole_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    queued = {"success": False, "results": {}, "command_id": "cmd-8", "pending": True, "location": "/posts/post-8",
              "note": "queued behind the automatic retry of Instagram at 2026-11-30 02:06:47 UTC (a rate limit): "
                      "handled after it",
              "post": {"id": "post-8", "status": "failed", "error_message": "instagram: rate limited"}}

    done = answered_202_without_waiting(monkeypatch, queued, ["retry", "post-8"])

    assert done.exit_code == 0, done.output
    assert "This command is queued behind the automatic retry of Instagram at 2026-11-30 02:06:47 UTC" in done.output


def answered_202_then(monkeypatch: pytest.MonkeyPatch, accepted: dict[str, Any], command: dict[str, Any],
                      argv: list[str], detail: dict[str, Any]) -> tuple[Result, list[float]]:
    """The CLI run with `argv` against an API that answers its command 202 with `accepted`, and whose post detail, once
    its results are awaited, is `detail` with `command`: the output, and the waits it was asked for."""
    waits: list[float] = []

    def answer(_api: Api, method: str, _path: str, **_kwargs: Any) -> httpx.Response:
        assert method == "POST"
        return httpx.Response(202, json=accepted)

    def awaited(_api: Api, _post_id: str, _command_id: str, timeout: float, _progress: Any = None) -> dict[str, Any]:
        waits.append(timeout)
        return {**detail, "command": command}

    monkeypatch.setattr(Api, "call", answer)
    monkeypatch.setattr(Api, "wait_for", awaited)
    return CliRunner().invoke(app, argv, env={"COLUMNS": "200"}), waits


def test_a_retry_queued_behind_a_publish_under_way_waits_for_its_own_results(monkeypatch: pytest.MonkeyPatch) -> None:
    # Queued behind Instagram's container that takes its time: handled within moments, so the CLI waits for the
    # retry's results as the README says, instead of ending at once on the earlier failure ("Still publishing").
    queued = {"success": False, "results": {}, "command_id": "cmd-5", "pending": True, "location": "/posts/post-5",
              "note": "queued behind the publish of Instagram under way (its result is not in yet), which goes out "
                      "with the content it has, its automatic retries too: handled after it, and the results shown "
                      "until then are the earlier ones",
              "post": {"id": "post-5", "status": "failed", "error_message": "facebook: Missing or invalid image file"}}
    retried = {"success": True, "command_id": "cmd-5", "pending": False, "location": "/posts/post-5",
               "results": {"facebook": {"platform": "facebook", "success": True, "postId": "747917475065823_5"}},
               "post": {"id": "post-5", "status": "posted", "error_message": None}}

    done, waits = answered_202_then(
        monkeypatch, queued, {"command_id": "cmd-5", "settled": True, "held": False, "refused": None,
                              "response": retried},
        ["retry", "post-5", "--image-url", "https://cdn.example.com/a.jpg"], {**POSTED, "id": "post-5"})

    assert done.exit_code == 0, done.output
    assert len(waits) == 1
    # Said while it waits, then the retry's own results.
    assert done.output.count("⏳ This command is queued behind the publish of Instagram under way") == 1
    assert "Still publishing" not in done.output
    assert "Status: ✅ Posted" in done.output


def test_a_publish_left_to_a_platforms_long_wait_is_reported_once_the_api_says_it_is_held(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The API's 202 says when Instagram is tried again; the CLI asks whether that is past its own wait (`within`):
    # held, it reports at once, not after its whole --wait (a wait of a few seconds it would wait out instead).
    waiting = {"success": False, "command_id": "cmd-7", "pending": True, "location": "/posts/post-7",
               "results": {"facebook": {"platform": "facebook", "success": True, "postId": "747917475065823_9"}},
               "note": "Instagram is retried automatically at 2026-11-30 05:22:36 UTC (the platform's own wait)",
               "post": {"id": "post-7", "status": "failed", "error_message": "instagram: rate limited"}}

    done, waits = answered_202_then(
        monkeypatch, waiting, {"command_id": "cmd-7", "settled": False, "held": True, "refused": None,
                               "response": waiting},
        ["publish", "Autumn sale", "--image-url", "https://cdn.example.com/a.jpg"],
        {**POSTED, "id": "post-7", "status": "failed"})

    assert done.exit_code == 0, done.output
    assert len(waits) == 1
    assert "⏳ Instagram is retried automatically at 2026-11-30 05:22:36 UTC (the platform's own wait)." in done.output


def mixed_failure(facebook_failed: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A publish's 202 and its post once awaited: Instagram rate limited, retried automatically in a while; Facebook
    refused the image (it waits for the user) or published."""
    accepted = {"success": False, "command_id": "cmd-4", "pending": True, "location": "/posts/post-4", "results": {},
                "post": {"id": "post-4", "status": "failed", "error_message": "instagram: rate limited"}}
    facebook = {"platform": "facebook", "success": False, "error": "Missing or invalid image file"} \
        if facebook_failed else {"platform": "facebook", "success": True, "postId": "747917475065823_4"}
    detail = {"id": "post-4", "status": "failed", "publish_target": "both", "links": {}, "history": [],
              "insights": {"publish_results": [
                  facebook, {"platform": "instagram", "success": False, "error": "Application request limit reached"}]},
              "needed_action": {"facebook": "fix the image URL"} if facebook_failed else {},
              "automatic_retry": {"instagram": "2026-11-30T05:22:36.000Z"},
              "attempts": [{"platform": "facebook", "outcome": "failed" if facebook_failed else "published"},
                           {"platform": "instagram", "outcome": "failed"}]}
    return accepted, detail


def published_with_instagram_retried_by_itself(monkeypatch: pytest.MonkeyPatch, facebook_failed: bool) -> Result:
    """`smartretry publish` whose command is decided and held by Instagram's automatic retry (`mixed_failure`)."""
    accepted, detail = mixed_failure(facebook_failed)
    # Held: the API's answer says when Instagram is tried again.
    held = {**accepted, "note": "Instagram is retried automatically at 2026-11-30 05:22:36 UTC (the platform's own "
                                "wait)"}
    done, _waits = answered_202_then(
        monkeypatch, accepted, {"command_id": "cmd-4", "settled": False, "held": True, "refused": None,
                                "response": held},
        ["publish", "Autumn sale", "--image-url", "https://cdn.example.com/a.jpg"], detail)
    return done


def test_a_publish_whose_failure_waits_for_the_user_fails_though_another_platform_is_retried_by_itself(
        monkeypatch: pytest.MonkeyPatch) -> None:
    done = published_with_instagram_retried_by_itself(monkeypatch, facebook_failed=True)

    # However Instagram's retry ends, Facebook stays failed until the image is fixed: a script must hear of it.
    assert done.exit_code == 1, done.output
    assert "Needed for Facebook: fix the image URL (then retry with it: smartretry retry post-4 --image-url URL)" \
        in done.output
    assert "Failed: Facebook needs you (above); the service retries Instagram by itself. `smartretry show post-4` " \
           "for the outcome." in done.output
    assert "Not final" not in done.output


def test_show_says_how_to_retry_with_the_post_fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    _accepted, detail = mixed_failure(facebook_failed=True)
    detail = {**detail, "automatic_retry": {}, "attempts": [],
              "needed_action": {"facebook": "fix the post", "instagram": "fix the post"}}
    shown = shown_post(monkeypatch, detail)
    assert "Needed for Facebook: fix the post (then retry with it: smartretry retry post-4 --caption TEXT, " \
           "--image-url URL or --link URL)" in shown.output
    # Instagram takes no link.
    assert "Needed for Instagram: fix the post (then retry with it: smartretry retry post-4 --caption TEXT or " \
           "--image-url URL)" in shown.output


def test_a_publish_whose_only_failure_is_retried_by_itself_is_not_final(monkeypatch: pytest.MonkeyPatch) -> None:
    done = published_with_instagram_retried_by_itself(monkeypatch, facebook_failed=False)

    assert done.exit_code == 0, done.output
    assert "Not final: the service retries by itself; `smartretry show post-4` for the outcome." in done.output


def demo_account_connected(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The API as the demo meets it, with account `demo` connected to the sandbox's Page and Instagram account: the
    calls made to it, kept in order; the first publish stops the demo."""
    from publishers.sandbox import DEMO_IG_USER_ID, DEMO_PAGE_ID

    calls: list[tuple[str, str]] = []

    def answer(_api: Api, method: str, path: str, **_kwargs: Any) -> httpx.Response:
        calls.append((method, path))
        if path == "/accounts":
            return httpx.Response(200, json={"accounts": [
                {"account": "demo", "page_id": DEMO_PAGE_ID, "ig_user_id": DEMO_IG_USER_ID}]})
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        raise ApiError("stopped here: the first publish", 500)

    monkeypatch.setattr(Api, "call", answer)
    return calls


def test_the_demo_keeps_the_token_of_an_account_already_connected_to_the_sandbox(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = demo_account_connected(monkeypatch)
    done = CliRunner().invoke(app, ["demo"], env={"SMARTRETRY_SANDBOX_URL": "", "COLUMNS": "200"})

    # A token renewed after the sandbox revoked the demo's own is not put back to the revoked one.
    assert ("PUT", "/accounts/demo/token") not in calls, calls
    assert "is connected to the sandbox's Page and Instagram account: its token is kept" in done.output
    assert ("POST", "/posts") in calls


@pytest.mark.parametrize(("sandbox", "said"), [
    ("http://127.0.0.1:9", "did not answer (ConnectError)"),  # nothing listens on the discard port
    ("http://[::1", "is no http:// URL (Invalid port: ':1')"),
    ("ftp://sandbox.internal", "is no http:// URL (Request URL has an unsupported protocol 'ftp://'.)"),
])
def test_a_demo_given_a_sandbox_it_cannot_drive_says_so_in_one_line(
        monkeypatch: pytest.MonkeyPatch, sandbox: str, said: str) -> None:
    calls: list[tuple[str, str]] = []

    def answer(_api: Api, method: str, path: str, **_kwargs: Any) -> httpx.Response:
        calls.append((method, path))
        return httpx.Response(200, json={"status": "ok"})

    monkeypatch.setattr(Api, "call", answer)
    done = CliRunner().invoke(app, ["demo", "--sandbox-url", sandbox], env={"COLUMNS": "200"})

    assert done.exit_code == 2, done.output
    assert done.output.strip() == (
        f"error: the sandbox's address {sandbox} (--sandbox-url, or SMARTRETRY_SANDBOX_URL) {said}: give the address "
        "`smartretry run` prints for it, or leave it out to use the sandbox the service runs")
    assert calls == [("GET", "/healthz")]  # nothing stored or published


@pytest.mark.parametrize("address", ["http://ops:{password}@{host}", "ops:{password}@{host}", "//ops:{password}@{host}",
                                     "http://ops:pa/{password}@{host}", "http://ops:p#{password}@{host}"])
def test_an_apis_address_with_a_password_is_quoted_without_it(address: str) -> None:
    password = "s3cret-Passw0rd-of-the-proxy"
    done = CliRunner().invoke(app, ["show", "post-1", "--api-url",
                                    address.format(password=password, host=_no_broker())], env={"COLUMNS": "200"})
    assert done.exit_code != 0 and "error: " in done.output, done.output
    assert "…@" in done.output or "is no URL: Invalid port\n" in done.output, done.output
    assert password not in done.output and "'pa'" not in done.output and "'p'" not in done.output


def test_an_address_with_a_password_is_quoted_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    password = "s3cret-Passw0rd-of-the-proxy"
    done = CliRunner().invoke(app, ["show", "post-1", "--api-url", f"http://ops:{password}@{_no_broker()}"],
                              env={"COLUMNS": "200"})
    assert "error: no API at http://…@127.0.0.1:" in done.output, done.output
    monkeypatch.setattr(Api, "call", lambda *_args, **_kwargs: httpx.Response(200, json={"status": "ok"}))
    demo = CliRunner().invoke(app, ["demo", "--sandbox-url", f"http://ops:{password}@{_no_broker()}"],
                              env={"COLUMNS": "200"})
    assert "error: the sandbox's address http://…@127.0.0.1:" in demo.output, demo.output
    assert password not in done.output + demo.output


def test_the_demo_keeps_the_token_when_the_sandbox_did_not_take_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from publishers.sandbox import SandboxControl

    calls = demo_account_connected(monkeypatch)

    def refused(*_args: Any, **_kwargs: Any) -> str:
        raise httpx.ReadTimeout("the sandbox did not answer")

    monkeypatch.setattr(SandboxControl, "reject_spaces", lambda *_args, **_kwargs: None)
    monkeypatch.setattr(SandboxControl, "register_account", refused)
    done = CliRunner().invoke(app, ["demo"], env={"SMARTRETRY_SANDBOX_URL": "", "COLUMNS": "200"})

    # A token the sandbox never got would replace one that works.
    assert ("PUT", "/accounts/demo/token") not in calls, calls
    assert "its token is kept" in done.output


def test_an_accounts_wrong_id_is_set_with_the_option_for_that_id() -> None:
    from smartretry import pages
    from smartretry.cli_ops import _as_commands

    page_id = "set account acct-1's right Page id with PUT /accounts/acct-1/token, then retry"
    ig_id = "set account acct-1's right Instagram account id with PUT /accounts/acct-1/token, then retry"
    assert _as_commands(page_id) == \
        "set account acct-1's right Page id with smartretry accounts set-token acct-1 --page-id ..., then retry"
    assert _as_commands(ig_id).endswith("set-token acct-1 --ig-user-id ..., then retry")
    assert pages._page_action(page_id).endswith("with `smartretry accounts set-token acct-1 --page-id ...`, then retry")
    assert pages._page_action(ig_id).endswith("`smartretry accounts set-token acct-1 --ig-user-id ...`, then retry")


def test_the_captions_field_is_named_as_both_commands_take_it() -> None:
    from smartretry.cli_ops import _as_commands

    assert _as_commands("content.caption: String should have at most 63206 characters") == \
        "the caption (CAPTION, or a retry's --caption): String should have at most 63206 characters"
    # A message that names its field itself is not led by the field's name a second time.
    from smartretry.cli_ops import _problem

    answer = httpx.Response(422, json={"detail": [
        {"loc": ["body", "content", "caption"], "msg": "content.caption contains an access token", "type": "t"}]})
    assert _problem(answer) == "the caption (CAPTION, or a retry's --caption) contains an access token"


def test_the_apis_address_in_dot_env_is_the_one_the_cli_talks_to(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The README's settings all go in `.env`: the CLI's API address too, not only the shell's variable.
    (tmp_path / ".env").write_text("SMARTRETRY_API_URL=http://127.0.0.1:9/\nSMARTRETRY_API_PORT=8123\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMARTRETRY_API_URL", raising=False)
    done = CliRunner().invoke(app, ["show", "post-1"], env={"COLUMNS": "200"})
    assert "no API at http://127.0.0.1:9 " in done.output, done.output
    # The option still comes first.
    done = CliRunner().invoke(app, ["show", "post-1", "--api-url", "http://127.0.0.1:10"], env={"COLUMNS": "200"})
    assert "no API at http://127.0.0.1:10 " in done.output, done.output


def test_an_api_address_that_is_no_url_is_one_line_not_a_traceback() -> None:
    done = CliRunner().invoke(app, ["show", "post-1", "--api-url", "http://127.0.0.1:notaport"], env={"COLUMNS": "200"})
    assert done.exit_code == 2
    assert "error: the API's address (--api-url, or SMARTRETRY_API_URL) is no URL: Invalid port" in done.output
    assert "Traceback" not in done.output
    done = CliRunner().invoke(app, ["show", "post-1", "--api-url", "localhost:8080"], env={"COLUMNS": "200"})
    assert "is no http:// or https:// URL: give it as http://host:port" in done.output, done.output


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_dlq_list_takes_a_limit_of_at_least_one(monkeypatch: pytest.MonkeyPatch, limit: str) -> None:
    from smartretry import cli_ops

    def three(_bootstrap: str, _topic: str) -> cli_ops.DeadLetters:
        return cli_ops.DeadLetters(letters=[(offset, None, b"not one") for offset in range(3)])

    monkeypatch.setattr(cli_ops, "read_dead_letters", three)
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:29001", "COLUMNS": "200"}

    done = CliRunner().invoke(app, ["dlq", "list", "--limit", limit], env=env)

    assert done.exit_code == 2, done.output
    assert "--limit" in done.output and "(not a dead letter)" not in done.output
    one = CliRunner().invoke(app, ["dlq", "list", "--limit", "1"], env=env)
    assert one.exit_code == 0, one.output
    assert one.output.count("(not a dead letter)") == 1


POSTED = {"id": "post-6", "status": "posted", "publish_target": "facebook", "insights": {"publish_results": [
    {"platform": "facebook", "success": True, "postId": "747917475065823_6"}]}, "links": {}, "history": []}


def test_a_retry_decided_to_publish_nothing_after_the_apis_wait_is_refused_as_the_api_refuses_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Accepted (202) while another retry of the post was publishing; decided later: that one had published Facebook,
    # so this one published nothing. A script must not read it as this retry's success.
    reason = ("Nothing to retry: Facebook and Instagram already succeeded; to publish again anyway: "
              "POST /posts/post-6/republish")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={
                "success": False, "results": {}, "command_id": "cmd-6", "pending": True, "location": "/posts/post-6",
                "post": {"id": "post-6", "status": "publishing", "error_message": None}})
        return httpx.Response(200, json={**POSTED, "command": {
            "command_id": "cmd-6", "settled": True, "held": False, "refused": reason, "response": {
                "success": True, "results": {}, "command_id": "cmd-6", "pending": False,
                "post": {"id": "post-6", "status": "posted", "error_message": None}}}})

    _api_answering(monkeypatch, answer)
    done = CliRunner().invoke(app, ["retry", "post-6"], env={"COLUMNS": "200"})

    # As a retry the API refused at once (409) ends: said, with the post, and the exit status its status gives.
    assert done.exit_code == 0, done.output
    assert "Nothing to retry: Facebook and Instagram already succeeded. To publish again anyway: smartretry force " \
           "post-6 --reason ..." in done.output
    assert "Status: ✅ Posted" in done.output
    assert "error" not in done.output


def _api_answering(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[httpx.Request]:
    """Every Api the commands make talks to `answer` (an httpx.MockTransport handler); the requests it got."""
    sent: list[httpx.Request] = []
    made = Api.__init__

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        response: httpx.Response = answer(request)
        return response

    def with_transport(self: Api, base_url: str | None, settings: Any = None) -> None:
        made(self, base_url, settings)
        self.client.close()
        self.client = httpx.Client(base_url=self.base_url, transport=httpx.MockTransport(record))

    monkeypatch.setattr(Api, "__init__", with_transport)
    return sent


@pytest.mark.parametrize("line", [
    ["show", "../accounts"],
    ["show", "post-1/retry"],
    ["retry", "../accounts"],
    ["force", "../accounts", "--reason", "r", "--yes"],
    ["resolve", "../accounts", "facebook", "--not-published"],
    ["accounts", "set-token", "../posts", "--token-stdin"],
    ["publish", "Hello", "--image-url", "https://cdn.example.com/a.jpg", "--post-id", "a/b"],
    ["retry", "post-1", "--command-id", "../c"],
    ["publish", "Hello", "--image-url", "https://cdn.example.com/a.jpg", "--account", "../x"],
    ["retry", "post-1", "--account", "acme corp"],
    ["force", "post-1", "--reason", "r", "--yes", "--account", "a/b"],
], ids=lambda line: " ".join(line))
def test_an_id_that_is_no_id_is_a_usage_error_before_any_request(
        monkeypatch: pytest.MonkeyPatch, line: list[str]) -> None:
    def not_reached(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Not Found"})

    sent = _api_answering(monkeypatch, not_reached)

    done = CliRunner().invoke(app, line, env={"COLUMNS": "200"})

    assert done.exit_code == 2, done.output
    assert "is no id" in done.output and "Traceback" not in done.output
    assert sent == []


@pytest.mark.parametrize(("line", "said"), [
    (["publish", "Hello", "--target", "twitter"], "Invalid value for '--target': 'twitter' is not one of facebook, "
                                                  "instagram, both"),
    (["list", "--status", "bogus"], "Invalid value for '--status': 'bogus' is not one of publishing, posted, failed"),
    (["resolve", "post-1", "twitter", "--not-published"], "Invalid value for 'platform': 'twitter' is not one of "
                                                           "facebook, instagram"),
    (["force", "post-1", "--reason", "  ", "--yes"], "Invalid value for '--reason': must say something"),
    (["force", "post-1", "--reason", "\u200b", "--yes"], "Invalid value for '--reason': must say something"),
    (["force", "post-1", "--reason", "r", "--platform", "tiktok", "--yes"],
     "Invalid value for '--platform': 'tiktok' is not one of facebook, instagram"),
], ids=["target", "status", "platform", "reason", "invisible-reason", "force-platform"])
def test_a_choice_that_is_none_of_its_options_is_a_usage_error_naming_the_option(
        monkeypatch: pytest.MonkeyPatch, line: list[str], said: str) -> None:
    sent = _api_answering(monkeypatch, lambda _request: httpx.Response(500))

    done = CliRunner().invoke(app, line, env={"COLUMNS": "200"})

    assert done.exit_code == 2, done.output
    assert said in done.output
    assert sent == []


def test_force_of_one_platform_sends_it_and_asks_about_that_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    # The post read first has two attempts: the republish says it was decided on those.
    sent = _api_answering(monkeypatch, lambda request: httpx.Response(200, json={"attempts": [{}, {}]})
                          if request.method == "GET" else httpx.Response(500))

    asked = CliRunner().invoke(app, ["force", "post-1", "--reason", "new caption", "--platform", "Instagram"],
                               env={"COLUMNS": "200"})
    assert asked.exit_code == 2 and "a new post on Instagram, beside any already there" in asked.output
    assert sent == []  # not asked without a terminal to ask on: nothing read, nothing sent
    CliRunner().invoke(app, ["force", "post-1", "--reason", "new caption", "--platform", "Instagram", "--yes"],
                       env={"COLUMNS": "200"})

    assert [request.method for request in sent] == ["GET", "POST"]
    body = json.loads(sent[1].content)
    assert body["platforms"] == ["instagram"] and body["seen_attempts"] == 2


def _unanswered(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


PUBLISH = ["publish", "Autumn sale", "--image-url", "https://cdn.example.com/a.jpg", "--account", "acme"]


def test_a_publish_sent_and_not_answered_says_so_and_is_sent_again_as_the_same_post(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _api_answering(monkeypatch, _unanswered)

    first = CliRunner().invoke(app, PUBLISH, env={"COLUMNS": "200"})

    # Not "no API ... start the service": the request went out, and the post may be going out with it.
    assert first.exit_code == 3, first.output
    assert "no API at" not in first.output
    assert "the request was sent to the API at" in first.output and "(ReadTimeout)" in first.output
    assert "whether it was carried out is not known" in first.output
    body = json.loads(sent[0].content)
    command_id, post_id = body["command_id"], body["post_id"]
    assert f"run the same command line with these added:\n  --command-id {command_id} --post-id {post_id}\n" \
        in first.output
    again = CliRunner().invoke(app, [*PUBLISH, "--command-id", command_id, "--post-id", post_id])
    assert again.exit_code == 3
    assert json.loads(sent[1].content) == body
    # The post is fixed by the command: the same command id alone names the same post, here as at the API.
    alone = CliRunner().invoke(app, [*PUBLISH, "--command-id", command_id])
    assert alone.exit_code == 3
    assert json.loads(sent[2].content) == body


def test_a_publish_interrupted_while_the_api_holds_it_says_how_to_send_it_again_as_the_same_post(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt  # Ctrl-C while the API waits for the platforms before it answers

    sent = _api_answering(monkeypatch, interrupted)
    stopped = CliRunner().invoke(app, PUBLISH, env={"COLUMNS": "200"})

    # Rerun as it was typed, a new command would publish the post a second time.
    assert stopped.exit_code == 130, stopped.output
    body = json.loads(sent[0].content)
    assert "Interrupted: the request was sent to the API, which may carry it out all the same." in stopped.output
    assert f"--command-id {body['command_id']} --post-id {body['post_id']}" in stopped.output


def test_a_publish_interrupted_while_its_results_are_awaited_says_it_goes_on_and_names_the_post(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(_api: Api, _post_id: str, _command_id: str, _timeout: float, _progress: Any = None) -> None:
        raise KeyboardInterrupt

    stopped = accepted_then(monkeypatch, interrupted)

    assert stopped.exit_code == 130, stopped.output
    assert ("Interrupted while waiting for the results: post post-9's command cmd-9 was accepted and goes on "
            "(smartretry show post-9).") in stopped.output
    assert "--command-id cmd-9 --post-id post-9" in stopped.output


@pytest.mark.parametrize("line", [
    ["retry", "post-1", "--image-url", "https://cdn.example.com/b.jpg"],
    ["force", "post-1", "--reason", "the Page was restored", "--yes"],
    ["resolve", "post-1", "facebook", "--not-published"],
], ids=["retry", "force", "resolve"])
@pytest.mark.parametrize("failure", [httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError])
def test_a_command_sent_and_not_answered_names_its_command_id_to_send_it_again(
        monkeypatch: pytest.MonkeyPatch, line: list[str], failure: type[httpx.TransportError]) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the post, as `force` reads it first
            return httpx.Response(200, json={"attempts": [{}]})
        raise failure("no answer", request=request)

    sent = _api_answering(monkeypatch, broken)

    done = CliRunner().invoke(app, line, env={"COLUMNS": "200"})

    assert done.exit_code == 3, done.output
    assert "the request was sent to the API at http://" in done.output
    assert f"but no answer came ({failure.__name__}): whether it was carried out is not known" in done.output
    posted = [request for request in sent if request.method == "POST"]
    command_id = json.loads(posted[0].content)["command_id"]
    assert f"run the same command line with these added:\n  --command-id {command_id}\n" in done.output
    again = CliRunner().invoke(app, [*line, "--command-id", command_id])
    posted = [request for request in sent if request.method == "POST"]
    assert json.loads(posted[1].content) == json.loads(posted[0].content)
    assert again.exit_code == 3


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout])
def test_only_an_api_that_cannot_be_reached_is_said_to_be_missing(
        monkeypatch: pytest.MonkeyPatch, failure: type[httpx.TransportError]) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise failure("refused", request=request)

    _api_answering(monkeypatch, unreachable)

    done = CliRunner().invoke(app, PUBLISH, env={"COLUMNS": "200"})

    assert done.exit_code == 1, done.output
    assert "no API at http://" in done.output and f"({failure.__name__}): start the service" in done.output


def test_a_post_not_answered_for_is_no_missing_api_and_nothing_to_send_again(monkeypatch: pytest.MonkeyPatch) -> None:
    _api_answering(monkeypatch, _unanswered)

    done = CliRunner().invoke(app, ["show", "post-1"], env={"COLUMNS": "200"})

    assert done.exit_code == 1, done.output
    assert "did not answer (ReadTimeout): try again once the service answers" in done.output
    assert "no API at" not in done.output and "--command-id" not in done.output


def _no_broker() -> str:
    """An address where no broker answers (a port just freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_reading_dead_letters_from_a_broker_that_is_away_is_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    bootstrap = _no_broker()
    done = CliRunner().invoke(app, ["dlq", "list"], env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "COLUMNS": "200"})
    outside = capfd.readouterr()  # what reached the terminal past the runner: librdkafka's own lines, if any

    assert done.exit_code == 1, done.output
    assert f"error: the broker at {bootstrap} did not answer (Failed to get metadata" in done.output
    assert ("Traceback" not in done.output and done.exception is None) or isinstance(done.exception, SystemExit)
    assert "FAIL" not in outside.err + outside.out


def test_a_replay_whose_broker_is_away_is_one_line(tmp_path: Path) -> None:
    # The live projection has applied events; the broker that holds them does not answer.
    url = f"sqlite:///{tmp_path}/live.db"
    store = ProjectionStore(make_engine(url))
    store.create_schema()
    store.apply_batch("smartretry.post-events", 0, [], through=4)
    store.engine.dispose()
    bootstrap = _no_broker()

    done = CliRunner().invoke(app, ["replay", "--workers", "1"], env={
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "SMARTRETRY_DATABASE_URL": url, "COLUMNS": "200"})

    assert done.exit_code == 1, done.output
    assert f"error: the broker at {bootstrap} did not answer" in done.output
    assert "posts that differ" not in done.output


def test_run_does_not_serve_the_api_beyond_this_machine_with_the_readmes_keys(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("smartretry.logs.configure", lambda *_args, **_kwargs: None)
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["run"], env={
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "SMARTRETRY_API_HOST": "0.0.0.0", "SMARTRETRY_API_PORT": "9",
        "SMARTRETRY_API_KEY": None, "SMARTRETRY_SECRET_KEY": "a-secret-key-of-our-own-0123456789",
        "SMARTRETRY_DATABASE_URL": f"sqlite:///{tmp_path}/var/smartretry.db", "COLUMNS": "200"})

    assert done.exit_code == 2, done.output
    assert ("error: SMARTRETRY_API_KEY is still the development default the README prints, and the API would listen "
            "on 0.0.0.0") in done.output
    assert not (tmp_path / "var").exists()  # refused before anything is started or created


@pytest.mark.parametrize(("host", "shown"), [
    ("0.0.0.0", "http://127.0.0.1:8080"), ("::", "http://[::1]:8080"), ("127.0.0.1", "http://127.0.0.1:8080"),
    ("::1", "http://[::1]:8080"), ("api.internal", "http://api.internal:8080"),
])
def test_the_apis_address_printed_is_one_a_browser_here_can_open(host: str, shown: str) -> None:
    from smartretry.api import ApiServer

    assert ApiServer(None, None, host, 8080).url == shown  # type: ignore[arg-type]


@pytest.mark.parametrize(("host", "said"), [
    ("0.0.0.0", "0.0.0.0"), ("", "every address of this machine (SMARTRETRY_API_HOST is empty)")])
def test_the_api_alone_is_not_served_beyond_this_machine_with_the_readmes_keys(
        monkeypatch: pytest.MonkeyPatch, host: str, said: str) -> None:
    # The log left as it is: configured on the runner's own output, it would outlive this test.
    monkeypatch.setattr("smartretry.logs.configure", lambda *_args, **_kwargs: None)
    port = _no_broker().rsplit(":", 1)[1]  # a free port
    done = CliRunner().invoke(app, ["api"], env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "SMARTRETRY_API_HOST":
                                                 host, "SMARTRETRY_API_PORT": port, "SMARTRETRY_API_KEY": None,
                                                 "SMARTRETRY_SECRET_KEY": None, "COLUMNS": "200"})

    assert done.exit_code == 2, done.output
    assert ("error: SMARTRETRY_API_KEY and SMARTRETRY_SECRET_KEY are still the development default the README prints, "
            f"and the API would listen on {said}: set your own") in " ".join(done.output.split())


def test_a_post_waiting_for_an_operator_says_so_in_the_list_and_show_says_from_when_it_may_be_not_published(
        monkeypatch: pytest.MonkeyPatch) -> None:
    action = "check Facebook for the post, then resolve the attempt"
    summary = {"id": "post-1", "status": "publishing", "error_message": None, "publish_target": "facebook",
               "caption": "Autumn sale", "updated_at": "2026-11-30T09:00:00.000Z",
               "automatic_retry": {}, "automatic_retry_by": {}, "automatic_retry_overdue": [],
               "needed_action": {"facebook": action}}
    detail = {"id": "post-1", "status": "publishing", "error_message": None, "post_url": None,
              "insights": {"publish_results": []}, "publish_target": "facebook",
              "content": {"caption": "Autumn sale", "image_url": "https://cdn.example.com/a.jpg"}, "account": "acme",
              "links": {}, "earlier_posts": {}, "needed_action": {"facebook": action},
              "outcome_unknown": {"facebook": "Facebook post lookup could not tell: a post without a caption"},
              "not_published_from": {"facebook": "2099-01-02T03:04:05.000Z"},
              "automatic_retry": {}, "automatic_retry_by": {}, "automatic_retry_overdue": [], "retry_preview": "",
              "retried": "", "attempts_by_platform": {"facebook": 1}, "retries_by_platform": {}, "history": [],
              "retry_history": [], "created_at": None, "updated_at": None,
              "attempts": [{"platform": "facebook", "kind": "first publish", "outcome": "failed",
                            "error": "Facebook photo upload failed: 400 - Missing\nor invalid image file",
                            "started_at": "2026-11-30T08:58:00.000Z"},
                           {"platform": "facebook", "kind": "automatic retry", "outcome": "published", "error": None,
                            "resolved_by": "resolve-1", "unknown_because": "Facebook photo upload failed: 500 - boom",
                            "started_at": "2026-11-30T08:59:00.000Z"},
                           {"platform": "facebook", "kind": "retry", "outcome": "not known yet", "error": None,
                            "started_at": "2026-11-30T09:00:00.000Z"},
                           {"platform": "instagram", "kind": "first publish", "outcome": "failed",
                            "error": "Instagram publish was interrupted before its result was recorded; an operator "
                                     "found it was not published (checked the account)", "resolved_by": "resolve-2",
                            "started_at": "2026-11-30T09:01:00.000Z"}]}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"posts": [summary], "next_cursor": None} if request.url.path == "/posts"
                              else detail)

    _api_answering(monkeypatch, answer)
    listed = CliRunner().invoke(app, ["list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert f"    ⚠ Needed for Facebook: {action}\n" in listed.output
    shown = CliRunner().invoke(app, ["show", "post-1"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "--published-as POST_ID | --not-published (from 2099-01-02 03:04:05 UTC: Facebook may still hold the " \
           "request until then)" in shown.output
    # Each attempt, a failure's words on one line.
    assert "  2026-11-30 08:58:00 UTC  Facebook first publish: ❌ failed: Facebook photo upload failed: 400 - " \
           "Missing or invalid image file\n" in shown.output
    assert "  2026-11-30 08:59:00 UTC  Facebook automatic retry: ✅ published (as an operator said) (its outcome was " \
           "not known at first: Facebook photo upload failed: 500 - boom)\n" in shown.output
    assert "  2026-11-30 09:00:00 UTC  Facebook retry: ⏳ not known yet\n" in shown.output
    # The operator is named once: by the failure's own words.
    assert "an operator found it was not published (checked the account)\n" in shown.output


def shown_post(monkeypatch: pytest.MonkeyPatch, detail: dict[str, Any]) -> Result:
    """`smartretry show` of the post the API answers with `detail`; it exits 0."""
    _api_answering(monkeypatch, lambda _request: httpx.Response(200, json=detail))
    shown = CliRunner().invoke(app, ["show", str(detail["id"])], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    return shown


# Published on Instagram, its media id known and its address not.
ID_ONLY = {"id": "post-1", "status": "posted", "error_message": None, "post_url": None, "publish_target": "instagram",
           "insights": {"publish_results": [{"platform": "instagram", "success": True, "postId": "18168097029388617"}]},
           "content": None, "account": "acme", "links": {}, "earlier_posts": {}, "needed_action": {},
           "outcome_unknown": {}, "automatic_retry": {}, "automatic_retry_by": {}, "automatic_retry_overdue": [],
           "retry_preview": "", "retried": "", "history": [], "attempts": [], "recorded_by_operator": []}


def test_show_gives_an_id_without_an_address_as_the_page_does(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = shown_post(monkeypatch, ID_ONLY)
    assert "✅ Instagram: Published  18168097029388617 (its address could not be told from Instagram's answers: see " \
           "the account)" in shown.output


def test_show_says_an_address_an_operator_did_not_give_was_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = shown_post(monkeypatch, {**ID_ONLY, "recorded_by_operator": ["instagram"]})
    assert "✅ Instagram: Published  18168097029388617 (its address was not given when it was recorded: see the " \
           "account)" in shown.output


def _cli(*args: str, env: dict[str, str | None], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`smartretry ARGS` as a user runs it (its entry point, in a process of its own); None in `env` unsets."""
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", "smartretry.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={name: value for name, value in environment.items() if value is not None}, timeout=120)


def test_a_database_that_does_not_answer_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    ran = _cli("replay", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                              "SMARTRETRY_DATABASE_URL": "postgresql+psycopg://app:db-pass-1234@127.0.0.1:9/smartretry"},
               cwd=tmp_path)

    assert ran.returncode == 1, ran.stderr
    assert ran.stderr.strip().splitlines() == [
        'error: a database did not answer (OperationalError: connection failed: connection to server at '
        '"127.0.0.1", port 9 failed: Connection refused): is its URL right (SMARTRETRY_DATABASE_URL, or the '
        "command's own, such as replay's --scratch), and is it up?"]


def test_a_database_of_another_kind_or_without_its_driver_is_refused_by_the_settings(tmp_path: Path) -> None:
    for url, why in (("mysql://app:pw@db.internal/smartretry", "mysql is not SQLite or PostgreSQL"),
                     ("postgresql+asyncpg://app:pw@db.internal/smartretry", "its driver asyncpg is not installed")):
        ran = _cli("replay", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "SMARTRETRY_DATABASE_URL": url},
                   cwd=tmp_path)
        assert ran.returncode == 1, ran.stderr
        assert f"SMARTRETRY_DATABASE_URL is no database URL this service can use ({why})" in ran.stderr
        assert "Traceback" not in ran.stderr


def test_a_handler_without_its_projection_is_refused_and_creates_none(tmp_path: Path) -> None:
    # A mistyped path: the handler would join the service's group and hold its partitions' commands, waiting for a
    # projection no processor writes.
    ran = _cli("handler", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                               "SMARTRETRY_GRAPH_API_BASE_URL": "http://127.0.0.1:9",
                               "SMARTRETRY_DATABASE_URL": f"sqlite:///{tmp_path}/typo/smartretry.db"}, cwd=tmp_path)

    assert ran.returncode == 2, ran.stderr
    assert f"error: there is no projection at {tmp_path / 'typo' / 'smartretry.db'}" in ran.stderr
    assert not (tmp_path / "typo").exists()


def test_a_handler_that_writes_json_says_why_it_cannot_start_as_one_json_object(tmp_path: Path) -> None:
    for env, said in (({"KAFKA_BOOTSTRAP_SERVERS": None}, "set KAFKA_BOOTSTRAP_SERVERS to the service's broker"),
                      ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                        "SMARTRETRY_DATABASE_URL": f"sqlite:///{tmp_path}/typo/smartretry.db"},
                       "there is no projection at")):
        ran = _cli("handler", env={**env, "SMARTRETRY_LOG_FORMAT": "json",
                                   "SMARTRETRY_GRAPH_API_BASE_URL": "http://127.0.0.1:9"}, cwd=tmp_path)

        assert ran.returncode == 2, ran.stderr
        lines = [line for line in (ran.stdout + ran.stderr).splitlines() if line.strip()]
        assert len(lines) == 1, lines
        logged = json.loads(lines[0])
        assert logged["level"] == "ERROR" and logged["message"].startswith(said), logged


def test_a_data_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    ran = _cli("broker", env={"SMARTRETRY_BROKER_DATA_DIR": "/proc/no-such-dir/kafka", "KAFKA_BOOTSTRAP_SERVERS": None},
               cwd=tmp_path)

    assert ran.returncode == 1, ran.stderr
    assert ran.stderr.strip().splitlines()[-1].startswith("error: [Errno 2] No such file or directory: '/proc/")
    assert "Traceback" not in ran.stderr


def test_a_broker_on_a_port_that_is_taken_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = _cli("broker", env={"SMARTRETRY_BROKER_DATA_DIR": str(tmp_path / "kafka"),
                                  "SMARTRETRY_BROKER_PORT": str(port), "KAFKA_BOOTSTRAP_SERVERS": None}, cwd=tmp_path)

    assert ran.returncode == 2, ran.stderr
    assert f"error: port {port} is taken (another `smartretry run`?): stop what uses it, or set " \
        "SMARTRETRY_BROKER_PORT to a free port" in ran.stderr
    assert "ready" not in ran.stdout and not (tmp_path / "kafka").exists()


def test_a_token_asked_for_without_a_terminal_says_to_pipe_it_in() -> None:
    done = CliRunner().invoke(app, ["accounts", "set-token", "acme"], input="typed-token-shown-as-typed\n",
                              env={"COLUMNS": "200"})

    assert done.exit_code == 2, done.output
    assert done.output.strip() == "error: there is no terminal to ask for the token on: pipe it in with --token-stdin"


def test_a_token_piped_in_empty_is_refused_before_anything_is_sent() -> None:
    done = CliRunner().invoke(app, ["accounts", "set-token", "acme", "--token-stdin"], input="\n",
                              env={"COLUMNS": "200", "SMARTRETRY_API_URL": "http://127.0.0.1:1"})

    assert done.exit_code == 2, done.output
    assert done.output.strip() == ("error: no token was given: standard input held none (pipe the token in, on its "
                                   "first line)")


@pytest.mark.parametrize("answer", [
    httpx.Response(400, json={"error": {"message": "Unsupported get request", "code": 100}}),  # the Graph API's
    httpx.Response(404, text=""), httpx.Response(400, json=[1, 2]),
])
def test_an_answer_that_is_not_the_apis_says_so(answer: httpx.Response) -> None:
    from smartretry.cli_ops import NOT_THE_API, _problem

    assert _problem(answer) == NOT_THE_API


def test_a_processor_whose_own_broker_stops_ends_saying_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import asyncio
    import contextlib
    from collections.abc import Iterator
    from types import SimpleNamespace

    from smartretry import cli

    monkeypatch.setattr("smartretry.logs.configure", lambda *_args, **_kwargs: None)
    monkeypatch.setattr("streams.gc_tuning.disable_gc", lambda: None)
    codes = iter([None, None, -9])
    stopped: list[int] = []

    class Dying:
        """The broker the processor started: its JVM killed a moment later."""

        bootstrap = "127.0.0.1:9"
        local = SimpleNamespace(data_dir=tmp_path / "kafka")

        def exit_code(self) -> int | None:
            code = next(codes, -9)
            if code is not None:
                stopped.append(code)
            return code

    @contextlib.contextmanager
    def broker_for(_settings: object, holder: str = "") -> Iterator[Dying]:
        yield Dying()

    async def run_projector(_settings: object, *, stop: asyncio.Event, on_stop: object = None) -> None:
        await asyncio.wait_for(stop.wait(), 30)  # projecting until told to stop

    monkeypatch.setattr(cli, "broker_for", broker_for)
    monkeypatch.setattr("streams.projector.run_projector", run_projector)
    done = CliRunner().invoke(app, ["processor"], env={"KAFKA_BOOTSTRAP_SERVERS": None, "COLUMNS": "200"})

    assert done.exit_code == 1, done.output
    assert f"error: the broker stopped (the JVM exited with -9): its log is {tmp_path / 'kafka' / 'broker.log'}" \
        in done.output
    assert stopped


def test_a_signal_while_the_main_thread_waits_ends_the_wait() -> None:
    import signal
    import threading
    import time

    from smartretry.cli import Interrupted

    stop = Interrupted()
    before = signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        started = time.monotonic()
        assert stop.wait(10.0)
        assert time.monotonic() - started < 2.0
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert not Interrupted().wait(0.05)  # a timeout, unset


def test_a_caption_cut_for_one_line_keeps_an_emoji_whole_or_leaves_it_out() -> None:
    from smartretry.cli_ops import _one_line

    assert _one_line("a" * 57 + "👩\u200d💻 end", 60) == "a" * 57 + "…"
    assert _one_line("x" * 56 + " keycap 1\ufe0f\u20e3 end", 60) == "x" * 56 + " ke…"
    assert _one_line("a" * 58 + "👍🏽 z", 60) == "a" * 58 + "…"
    assert _one_line("a" * 50 + "👍🏽 z", 60) == "a" * 50 + "👍🏽 z"


@pytest.mark.parametrize("settled", [True, False], ids=["recorded", "behind-the-command-under-way"])
def test_resolving_an_earlier_instagram_container_says_a_retry_publishes_it_now(
        monkeypatch: pytest.MonkeyPatch, settled: bool) -> None:
    # Not the interrupted attempt's "the command carries on": the command that met the container has ended, or the
    # resolution waits for it to end.
    from smartretry.api import post_detail
    from tests.unit.test_fold import held_by_an_earlier_container, operators_word

    history, first, _second = held_by_an_earlier_container()
    state = (operators_word(history, first, published=False) if settled else history).state()
    detail = json.loads(json.dumps(post_detail(state, 5), default=str))
    resolved = {"success": False, "command_id": "resolve-4", "results": {}, "location": f"/posts/{state.post_id}",
                "pending": not settled, "post": {"id": state.post_id, "status": "failed", "error_message": "x"}}

    def answer(_api: Api, method: str, _path: str, **_kwargs: Any) -> httpx.Response:
        return httpx.Response(200 if settled else 202, json=resolved if method == "POST" else detail)

    def unsettled(_api: Api, _post_id: str, _command_id: str, _timeout: float, _progress: Any = None) -> dict[str, Any]:
        return {**detail, "command": {"command_id": "resolve-4", "settled": False, "held": False, "refused": None,
                                      "response": None}}

    monkeypatch.setattr(Api, "call", answer)
    monkeypatch.setattr(Api, "wait_for", unsettled)
    done = CliRunner().invoke(app, ["resolve", state.post_id, "instagram", "--attempt-id", first, "--not-published"],
                              env={"COLUMNS": "200"})

    assert done.exit_code == 0, done.output
    assert "carries on" not in done.output
    if settled:
        assert ("Recorded as not published: its container is not asked about again, so a retry publishes "
                f"Instagram (`smartretry retry {state.post_id}`).") in done.output
    else:
        assert "Sent: it is recorded once the post's command under way has ended" in done.output


def test_a_platform_to_republish_once_looked_at_is_said_as_the_command_and_the_page_form_that_do_it() -> None:
    from smartretry import pages
    from smartretry.cli_ops import _as_commands

    action = ("check Facebook for the post: if it is there, record it (POST /posts/p-1/resolve naming facebook, "
              "published, with its id); if not, republish Facebook (POST /posts/p-1/republish naming facebook in "
              "platforms). A retry leaves it alone, as it may have gone out")
    assert _as_commands(action) == (
        "check Facebook for the post: if it is there, record it (smartretry resolve p-1 facebook --published-as "
        "POST_ID); if not, republish Facebook (smartretry force p-1 --platform facebook --reason ...). A retry leaves "
        "it alone, as it may have gone out")
    assert "(Publish again, below, with only Facebook chosen, or `smartretry force p-1 --platform facebook --reason " \
           "...`)" in pages._page_action(action, can_republish=True)
    assert "record it (`smartretry resolve p-1 facebook --published-as POST_ID`)" in pages._page_action(action)
    # Imported without content or an account, the page has no form for it: the command alone.
    assert "(`smartretry force p-1 --platform facebook --reason ...`)" in pages._page_action(action)


def test_run_help_names_the_settings_that_place_it() -> None:
    shown = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    for setting in ("SMARTRETRY_API_PORT", "SMARTRETRY_SANDBOX_PORT", "SMARTRETRY_BROKER_PORT",
                    "SMARTRETRY_BROKER_CONTROLLER_PORT", "KAFKA_BOOTSTRAP_SERVERS", "SMARTRETRY_DATABASE_URL"):
        assert setting in shown.output
