"""The operator's command line against a running API and a real broker."""

from __future__ import annotations

import json
import re
import socket
import uuid
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from publishers.sandbox import SandboxControl
from schemas.commands import ForceRepublishRequested, PostContent, ResolveAttemptRequested, RetryRequested
from schemas.common import ErrorKind
from schemas.envelope import decode_command, encode
from schemas.events import CommandDecided, PostSubmitted, PublishAttempted
from smartretry.cli import app
from smartretry.settings import Settings
from streams.dlq import make_dead_letter
from streams.kafka import deliver
from tests.integration.test_api import (
    API_KEY,
    AT,
    FB_ERROR,
    RunningApi,
    api_fixture,  # noqa: F401 - the `api` fixture
    messages_on,
    seed_events,
    store_events,
    store_interrupted,
    store_post,
    store_retrying,
)
from tests.integration.test_api_end_to_end import API_KEY as E2E_KEY
from tests.integration.test_api_end_to_end import (
    ServiceApi,
    service_api_fixture,  # noqa: F401 - the `service_api` fixture
)
from tests.support.secrets import meta_shaped_token
from tests.support.service import service, shared_sandbox  # noqa: F401 - fixtures it needs
from tests.unit.test_fold import History

pytestmark = pytest.mark.integration


def run(api: RunningApi, *args: str, stdin: str | None = None) -> tuple[int, str]:
    env = {"SMARTRETRY_API_URL": api.url, "SMARTRETRY_API_KEY": API_KEY, "KAFKA_BOOTSTRAP_SERVERS": api.bootstrap,
           "SMARTRETRY_TOPIC_PREFIX": api.topics.prefix, "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env, input=stdin)
    return result.exit_code, result.output


def test_show_prints_the_post_as_the_seeds_detail_view(api: RunningApi) -> None:
    store_post(api, "post-1")
    code, output = run(api, "show", "post-1")
    assert code == 0, output
    assert "Status: ❌ Failed" in output
    assert f"❌ Facebook: {FB_ERROR}" in output
    assert "✅ Instagram: Published  https://www.instagram.com/p/DRJ1nlKDgY9/" in output
    assert "Needed for Facebook: fix the image URL" in output
    assert "Note: Will only retry Facebook" in output
    assert "Publishing to both Facebook and Instagram..." in output
    assert f"{api.url}/ui/posts/post-1" in output
    # Its history in the order it happened, every time said alike: the command, then the attempts it made.
    history = [line.strip() for line in output.splitlines()
               if re.match(r"\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  ", line)]
    assert len(history) == 3, output
    assert "UTC  PublishRequested: Publishing to both Facebook and Instagram..." in history[0]
    assert all(" first publish: " in line for line in history[1:])
    code, output = run(api, "show", "post-1", "--json")
    assert json.loads(output)["status"] == "failed"


def test_show_prints_an_old_documents_own_failure_when_it_kept_no_results(api: RunningApi) -> None:
    history = History(post_id="legacy-msg").legacy({"insights": {}, "status": "failed",
                                                    "error_message": "instagram: token expired"}, target="instagram")
    store_events(api, history.events)
    code, output = run(api, "show", "legacy-msg")
    assert code == 0, output
    assert "Status: ❌ Failed" in output
    assert "❌ instagram: token expired" in output


def test_show_says_how_to_re_authenticate_as_the_page_does(api: RunningApi) -> None:
    store_post(api, "post-expired", facebook_ok=True, instagram_ok=False)
    account = api.client.get("/posts/post-expired").json()["account"]
    code, output = run(api, "show", "post-expired")
    assert code == 0, output
    assert (f"Needed for Instagram: re-authenticate Instagram, then retry (store the account's new token: smartretry "
            f"accounts set-token {account}; one token serves both platforms)") in output


def test_show_does_not_ask_for_an_action_on_a_platform_being_retried(api: RunningApi) -> None:
    store_retrying(api, "post-retrying")
    code, output = run(api, "show", "post-retrying")
    assert code == 0, output
    assert "Status: ⏳ Publishing" in output
    assert "Needed for" not in output and "fix the image URL" not in output
    # Its earlier failure is not shown as where Facebook stands, as on the page.
    assert "⏳ Facebook: publishing again..." in output and "❌ Facebook" not in output
    # Nor beside its retry whose outcome is not known yet, which says so on its own line.
    store_retrying(api, "post-unknown", lookup=ErrorKind.TRANSIENT)
    code, output = run(api, "show", "post-unknown")
    assert code == 0, output
    assert "⏳ Facebook: whether the post went out is not known yet" in output
    assert "❌ Facebook" not in output and "Facebook: publishing" not in output
    # A forced republish of a platform that went out: its post stays shown, and so is its publish under way.
    store_events(api, [*seed_events("post-forced", facebook_ok=True),
                       CommandDecided(event_id="forced-d", post_id="post-forced", occurred_at=AT, command_id="forced-c",
                                      command_type="ForceRepublishRequested", platforms=("instagram",), is_retry=True,
                                      forced=True),
                       PublishAttempted(event_id="forced-a", post_id="post-forced", occurred_at=AT,
                                        platform="instagram", attempt_id="forced-ig", attempt_number=2,
                                        command_id="forced-c", is_retry=True, forced=True)])
    code, output = run(api, "show", "post-forced")
    assert "✅ Instagram: Published" in output and "⏳ Instagram: publishing again..." in output
    assert "Facebook: publishing" not in output


def test_show_says_what_a_post_published_before_a_correction_keeps(api: RunningApi) -> None:
    history = History(post_id="post-corrected")
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "18107758234627017")
    retried = history.retry("cmd-retry", ("facebook",), content=PostContent(caption="Autumn sale: 30% off"))
    history.success("facebook", retried["facebook"], "747917475065823_122104567890123")
    api.stores.projection.apply_batch(api.topics.post_events, 8, list(enumerate(history.events)))

    code, output = run(api, "show", "post-corrected")

    assert code == 0, output
    assert "ℹ️ Instagram's post went out with the earlier caption “Autumn sale” and the image at " \
           "https://cdn.example.com/autumn sale.jpg, not the post's content now" in " ".join(output.split())


def test_show_keeps_each_history_entry_on_its_line_whatever_its_reason_holds(api: RunningApi) -> None:
    # A forced republish's reason is the operator's own text: its line breaks must not read as lines of the history.
    history = History(post_id="post-forced")
    history.publish(target="facebook")
    history.events.append(CommandDecided(
        event_id="forced-d", post_id="post-forced", occurred_at=datetime.now(UTC), command_id="forced-1",
        command_type="ForceRepublishRequested", platforms=("facebook",), is_retry=True, forced=True,
        note="Forced republish: Publishing to Facebook again (testing the\nnew   template)"))
    store_events(api, history.events)
    code, output = run(api, "show", "post-forced")
    assert code == 0, output
    assert "ForceRepublishRequested: Forced republish: Publishing to Facebook again (testing the new template)" \
        in output


def store_facebook_failure(api: RunningApi, post_id: str, message: str) -> None:
    """A Facebook-only post whose attempt failed with the platform's `message`."""
    history = History(post_id=post_id)
    attempts = history.publish(target="facebook")
    history.failure("facebook", attempts["facebook"], message, ErrorKind.INVALID_REQUEST)
    store_events(api, history.events)


def test_show_prints_text_that_looks_like_markup_as_it_is(api: RunningApi) -> None:
    store_facebook_failure(api, "post-markup", "Param message[/] is invalid [bold]x[/bold]")
    code, output = run(api, "show", "post-markup")
    assert code == 0, output
    assert "Param message[/] is invalid [bold]x[/bold]" in output
    code, output = run(api, "list")
    assert code == 0 and "Param message[/] is invalid [bold]x[/bold]" in output


def test_a_platforms_message_with_terminal_commands_is_shown_not_obeyed(api: RunningApi) -> None:
    store_facebook_failure(api, "post-escapes", "Bad \x1b[2J\x1b[31mimage\x07 url\nsecond line")
    for command in (["show", "post-escapes"], ["list"]):
        code, output = run(api, *command)
        assert code == 0 and "\x1b" not in output and "\x07" not in output, output
        assert "Bad \\x1b[2J\\x1b[31mimage\\x07 url" in output
    # In the list, on its own line: the message's line break would read as another post's.
    assert "url second line" in output


def test_emoji_made_with_joiners_are_shown_whole_and_invisible_or_reordering_characters_as_escapes(
        api: RunningApi) -> None:
    store_facebook_failure(api, "post-emoji", "Team 👨\u200d👩\u200d👧 and 🏳️\u200d🌈 \u202eevil zero\u200bwidth")
    code, output = run(api, "show", "post-emoji")
    assert code == 0, output
    assert "Team 👨\u200d👩\u200d👧 and 🏳️\u200d🌈" in output
    # A right-to-left override would make the rest of the line read backwards; a zero-width space is not seen.
    assert "\u202e" not in output and "\\u202eevil" in output
    assert "\u200b" not in output and "zero\\u200bwidth" in output


def test_show_of_an_unknown_post_says_so(api: RunningApi) -> None:
    code, output = run(api, "show", "nope")
    assert code == 1
    assert "404: post nope not found" in output
    # A publish just accepted and not taken up yet is not found either: said so, not left to read as lost.
    assert "or its publish has not been taken up yet (the service may be behind" in output


def test_list_shows_the_posts_as_the_api_lists_them_and_filters_by_status(api: RunningApi) -> None:
    code, output = run(api, "list")
    assert code == 0 and "No posts yet." in output
    store_post(api, "post-1")
    store_post(api, "post-2", facebook_ok=True)
    code, output = run(api, "list")
    assert code == 0, output
    # Both updated at the seed's time: in id order, as the API lists them.
    assert [line.split()[0] for line in output.splitlines() if line.startswith("post-")] == ["post-1", "post-2"]
    # Whose post it is, last on its line: one service publishes for several businesses.
    assert all(line.endswith(" UTC  acme") for line in output.splitlines() if line.startswith("post-"))
    assert "failed" in output and "posted" in output and FB_ERROR in output
    # Each post's caption, to tell them apart.
    assert output.count('    "Autumn sale starts today"') == 2
    events = seed_events("post-long", facebook_ok=False, instagram_ok=True)
    assert isinstance(events[0], PostSubmitted) and events[0].content is not None
    events[0] = events[0].model_copy(update={"content": events[0].content.model_copy(
        update={"caption": "Winter sale:\n" + "everything must go " * 10})})
    escaped = seed_events("post-escape", facebook_ok=True)
    assert isinstance(escaped[0], PostSubmitted) and escaped[0].content is not None
    escaped[0] = escaped[0].model_copy(update={"content": escaped[0].content.model_copy(
        update={"caption": "\x1b]0;pwned\x07 sale"})})
    store_events(api, escaped)
    store_events(api, events)
    code, output = run(api, "list")
    assert '    "Winter sale: everything must go everything must go everythi…"' in output
    # A caption's control characters reach the terminal as text, not as its commands.
    assert "\x1b" not in output and '    "\\x1b]0;pwned\\x07 sale"' in output
    store_post(api, "01KA8MNE2DT1E31F8Z3TJHF96E")
    narrow = CliRunner().invoke(app, ["list"], env={"SMARTRETRY_API_URL": api.url, "SMARTRETRY_API_KEY": API_KEY,
                                                    "COLUMNS": "80"})
    # An id whole, to copy, and the error, even in 80 columns.
    assert "01KA8MNE2DT1E31F8Z3TJHF96E  failed" in narrow.output and "Missing or invalid image file" in narrow.output
    code, output = run(api, "list", "--status", "posted")
    assert "post-2" in output and "post-1" not in output
    code, output = run(api, "list", "--status", "publishing")
    assert "No publishing posts." in output
    code, output = run(api, "list", "--limit", "1", "--json")
    listed = json.loads(output)
    assert len(listed["posts"]) == 1 and listed["next_cursor"]
    code, output = run(api, "list", "--status", "gone")
    assert code == 2 and "'gone' is not one of publishing, posted, failed" in output


def test_publish_puts_the_command_on_kafka_and_says_when_results_are_not_in(api: RunningApi) -> None:
    api.stores.credentials.set_token("acme", "acme-user-token-0001", "1", "2")
    code, output = run(api, "publish", "Autumn sale starts today", "--image-url", "https://cdn.example.com/a.jpg",
                       "--account", "acme", "--post-id", "cli-1", "--wait", "0.3")
    assert code == 0, output
    assert "Still publishing" in output
    [(key, _value)] = messages_on(api.bootstrap, api.topics.commands)
    assert key == "cli-1"
    env = {"SMARTRETRY_API_URL": api.url, "SMARTRETRY_API_KEY": API_KEY}
    as_json = CliRunner().invoke(app, ["publish", "Autumn sale", "--image-url", "https://cdn.example.com/a.jpg",
                                       "--account", "acme", "--post-id", "cli-2", "--wait", "0.3", "--json"], env=env)
    assert json.loads(as_json.stdout)["pending"] is True  # stdout is the JSON alone, for a script
    assert "Still publishing" in as_json.stderr


def test_a_bad_publish_shows_the_apis_reason_and_sends_nothing(api: RunningApi) -> None:
    api.stores.credentials.set_token("acme", "acme-user-token-0001", "1", "2")
    code, output = run(api, "publish", "no image", "--account", "acme")
    assert code == 1
    assert "422: content: Instagram needs an image (--image-url)" in output
    assert messages_on(api.bootstrap, api.topics.commands) == []


def test_retry_with_a_fixed_image_url(api: RunningApi) -> None:
    store_post(api, "post-1")
    code, output = run(api, "retry", "post-1", "--image-url", "https://cdn.example.com/autumn-sale.jpg",
                       "--wait", "0.3")
    assert code == 0, output
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert isinstance(command, RetryRequested)
    assert command.content is not None and command.content.image_url == "https://cdn.example.com/autumn-sale.jpg"


def test_retry_with_nothing_to_retry_and_force(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    code, output = run(api, "retry", "post-1")
    # The post is posted: nothing went wrong, so the exit status is 0, and the way to publish anyway is named.
    assert code == 0, output
    assert "Nothing to retry: Facebook and Instagram already succeeded." in output
    assert "smartretry force post-1 --reason" in output and "Posted" in output
    assert messages_on(api.bootstrap, api.topics.commands) == []
    env = {"SMARTRETRY_API_URL": api.url, "SMARTRETRY_API_KEY": API_KEY}
    as_json = CliRunner().invoke(app, ["retry", "post-1", "--json"], env=env)
    assert json.loads(as_json.stdout)["status"] == "posted"  # stdout is the JSON alone, for a script
    assert "Nothing to retry" in as_json.stderr
    code, output = run(api, "force", "post-1", "--reason", "testing", "--wait", "0.3")
    # Not without saying yes: it makes a new post on each platform.
    assert code == 2 and "a new post on each platform, beside any already there" in output
    assert "Add --yes to republish without being asked." in output
    assert messages_on(api.bootstrap, api.topics.commands) == []
    code, output = run(api, "force", "post-1", "--reason", "testing", "--wait", "0.3", "--yes")
    assert code == 0, output
    assert len(messages_on(api.bootstrap, api.topics.commands)) == 1


def test_force_carries_a_corrected_caption_for_the_platforms_it_republishes(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    code, output = run(api, "force", "post-1", "--platform", "instagram", "--caption", "Autumn sale: 30% off",
                       "--reason", "the price was wrong", "--wait", "0.3", "--yes")
    assert code == 0, output
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert isinstance(command, ForceRepublishRequested) and command.platforms == ["instagram"]
    assert command.content is not None and command.content.caption == "Autumn sale: 30% off"
    # The image is the post's own: a correction changes only what it names.
    assert command.content.image_url == api.client.get("/posts/post-1").json()["content"]["image_url"]


def test_retry_while_a_platform_is_still_publishing_says_to_wait_not_to_force(api: RunningApi) -> None:
    store_events(api, seed_events("inflight-1", facebook_ok=True)[:-1])
    code, output = run(api, "retry", "inflight-1")
    assert code == 0, output
    assert "Facebook still publishing" in output
    assert "Wait for its result (smartretry show inflight-1), then retry if it failed." in output
    assert "smartretry force" not in output
    assert messages_on(api.bootstrap, api.topics.commands) == []
    # The post as it stands: Instagram published, Facebook (no result yet) publishing.
    assert "✅ Instagram: Published" in output and "⏳ Facebook: publishing..." in output


def test_force_while_a_platform_is_still_publishing_is_refused_until_its_result_is_in(api: RunningApi) -> None:
    # Instagram went out; Facebook's attempt has no result yet. Republishing now would post Instagram again, and
    # Facebook a second time once its attempt turns out published.
    store_events(api, seed_events("inflight-2", facebook_ok=True)[:-1])
    code, output = run(api, "force", "inflight-2", "--reason", "looks stuck", "--yes")
    assert code == 1
    assert "409: Facebook still publishing (its last attempt has no result yet); wait for its result " \
           "(smartretry show inflight-2), then republish (smartretry force) if you still want it posted again" in output
    assert messages_on(api.bootstrap, api.topics.commands) == []


def test_the_apis_advice_names_the_commands_that_do_it(api: RunningApi) -> None:
    code, output = run(api, "publish", "Hello", "--image-url", "https://cdn.example.com/a.jpg", "--account", "nobody")
    assert code == 1
    assert "unknown account 'nobody': connect it with smartretry accounts set-token nobody --page-id ... " \
           "--ig-user-id ..." in output
    api.stores.credentials.set_token("page-only", "page-only-user-token-0003", "747917475065823", None)
    code, output = run(api, "publish", "Hello", "--image-url", "https://cdn.example.com/a.jpg", "--account",
                       "page-only")
    assert "has no Instagram business account connected: set it with smartretry accounts set-token page-only " \
           "--ig-user-id ..." in output
    env = {"SMARTRETRY_API_URL": api.url, "SMARTRETRY_API_KEY": "a-wrong-key-of-16-chars", "COLUMNS": "200"}
    refused = CliRunner().invoke(app, ["show", "post-1"], env=env)
    assert "401: missing or wrong API key: set SMARTRETRY_API_KEY to the service's API key" in refused.output


def test_resolve_says_what_came_of_an_attempt_and_refuses_what_does_not_apply(api: RunningApi) -> None:
    attempt = store_interrupted(api, "post-1")
    code, output = run(api, "resolve", "post-1", "facebook")
    assert code != 0 and "give either --published-as POST_ID or --not-published" in output
    code, output = run(api, "resolve", "post-1", "instagram", "--not-published")
    assert code == 1 and "409: nothing to resolve: Instagram's latest attempt has its result" in output
    assert messages_on(api.bootstrap, api.topics.commands) == []

    code, output = run(api, "resolve", "post-1", "facebook", "--published-as", "747917475065823_122104567890123",
                       "--attempt-id", attempt, "--note", "found on the Page", "--wait", "0.3")

    assert code == 0, output
    [(key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert key == "post-1" and isinstance(command, ResolveAttemptRequested)
    assert (command.published, command.platform_post_id, command.attempt_id, command.note) == (
        True, "747917475065823_122104567890123", attempt, "found on the Page")
    # Not published: recorded, and the command that made the attempt carries on; not the exit of a failed post.
    store_interrupted(api, "post-2")
    code, output = run(api, "resolve", "post-2", "facebook", "--not-published", "--wait", "0.3")
    assert code == 0, output
    assert "Recorded as not published: the command that made the attempt carries on and publishes Facebook again " \
           "while its automatic attempts last; `smartretry show post-2` follows it." in output


def test_accounts_set_token_never_prints_it(api: RunningApi) -> None:
    token = "cli-secret-token-31415"
    code, output = run(api, "accounts", "set-token", "acme", "--page-id", "747917475065823", "--token-stdin",
                       stdin=token + "\n")
    assert code == 0, output
    assert "Token of account acme saved (page 747917475065823" in output
    assert token not in output
    assert api.stores.credentials.get("acme").user_token.get_secret_value() == token
    code, output = run(api, "accounts", "list")
    assert code == 0
    assert "acme" in output and "747917475065823" in output and token not in output


def test_the_demo_never_replaces_the_token_of_an_account_of_someone_elses_page(api: RunningApi) -> None:
    token = "cli-own-account-token-2718"
    api.stores.credentials.set_token("shop", token, "111222333", None)
    posts_before = api.stores.projection.count()

    code, output = run(api, "demo", "--account", "shop")

    assert code == 1
    assert "account 'shop' is connected to Page 111222333" in output and "--account" in output
    assert api.stores.credentials.get("shop").user_token.get_secret_value() == token
    assert api.stores.projection.count() == posts_before  # nothing was published


def test_the_cli_says_how_to_start_the_service_when_the_api_is_not_there(api: RunningApi) -> None:
    result = CliRunner().invoke(app, ["show", "post-1", "--api-url", "http://127.0.0.1:9"],
                                env={"SMARTRETRY_API_KEY": API_KEY, "COLUMNS": "200"})
    assert result.exit_code == 1
    assert "no API at http://127.0.0.1:9" in result.output
    assert "smartretry run" in result.output


def test_dead_letters_are_listed_shown_and_requeued_onto_their_topic(api: RunningApi) -> None:
    original = encode(RetryRequested(command_id="c-9", post_id="post-9", requested_at=datetime.now(UTC)))
    letter = make_dead_letter(reason="the projection was unavailable", consumer="command-handler",
                              source_topic=api.topics.commands, partition=3, offset=17, key=b"post-9",
                              value=original)
    deliver(api.producer, api.topics.dead_letters, "post-9", encode(letter))
    deliver(api.producer, api.topics.dead_letters, "junk", b"not a dead letter")
    # The same command set aside again (the handler restarted before committing it): listed once.
    deliver(api.producer, api.topics.dead_letters, "post-9", encode(letter))

    code, output = run(api, "dlq", "list")
    assert code == 0, output
    assert "the projection was unavailable (set aside 2 times)" in output
    assert output.count(f"{api.topics.commands}[3]@17") == 1
    assert "(not a dead letter)" in output
    assert "2 dead letter(s)" in output and "1 more of messages listed above" in output

    code, output = run(api, "dlq", "show", "0")
    assert code == 0, output
    assert '"reason": "the projection was unavailable"' in output
    assert original.decode() in output.replace("\n", "")

    assert run(api, "dlq", "requeue", "1", "--yes")[0] == 1  # the junk one kept nothing to requeue
    # Not without saying yes, where there is no terminal to ask on.
    code, output = run(api, "dlq", "requeue", "0")
    assert code == 2 and "Add --yes to requeue without being asked." in output
    assert messages_on(api.bootstrap, api.topics.commands) == []
    code, output = run(api, "dlq", "requeue", "0", "--yes")
    assert code == 0, output
    assert f"Requeued dead letter 0 onto {api.topics.commands}[" in output
    assert messages_on(api.bootstrap, api.topics.commands) == [("post-9", original)]

    # The listing shows it was requeued (through either of its two dead letters), and a second requeue is asked
    # for explicitly.
    code, output = run(api, "dlq", "list")
    assert code == 0, output
    row = next(line for line in output.splitlines() if "the projection was unavailable" in line)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row), output
    assert "2 dead letter(s)" in output and "1 of those shown was requeued" in output
    for offset in ("0", "2"):
        code, output = run(api, "dlq", "requeue", offset, "--yes")
        assert code == 1, output
        assert "this message was requeued" in output and "add --again" in output
    assert "requeued" in run(api, "dlq", "show", "2")[1]
    assert messages_on(api.bootstrap, api.topics.commands) == [("post-9", original)]
    code, output = run(api, "dlq", "requeue", "0", "--yes", "--again")
    assert code == 0, output
    assert messages_on(api.bootstrap, api.topics.commands) == [("post-9", original)] * 2


def test_a_dead_letter_the_service_cannot_read_as_it_is_is_not_requeued_to_be_set_aside_again(api: RunningApi) -> None:
    valid = encode(RetryRequested(command_id="c-7", post_id="post-7", requested_at=datetime.now(UTC)))
    for reason, value in (("not JSON: Expecting value: line 1 column 1 (char 0)", b"retry post-7 please"),
                          ("invalid RetryRequested: command_id: Input should be a valid string",
                           valid.replace(b'"command_id":"c-7"', b'"command_id":7'))):
        letter = make_dead_letter(reason=reason, consumer="command-handler", source_topic=api.topics.commands,
                                  partition=1, offset=3, key=b"post-7", value=value)
        deliver(api.producer, api.topics.dead_letters, "post-7", encode(letter))

    for offset, said in (("0", "(not JSON"), ("1", "command_id: Input should be a valid string")):
        code, output = run(api, "dlq", "requeue", offset, "--yes")
        assert code == 1, output
        flat = " ".join(output.split())
        assert "this message would be set aside again as it is" in flat and said in flat
        assert "Send it again, mended, from where it came from." in flat
    assert messages_on(api.bootstrap, api.topics.commands) == []


def test_a_dead_letters_key_and_reason_reach_the_terminal_as_text_never_as_escapes_or_markup(
        api: RunningApi) -> None:
    # What an upstream put in a message's key, and a reason quoting its value: an escape sequence that would clear
    # the operator's screen, and text rich would read as markup.
    letter = make_dead_letter(reason="invalid RetryRequested: post_id: [red]\x1b[2Jx", consumer="command-handler",
                              source_topic=api.topics.commands, partition=1, offset=5, key=b"\x1b]0;pwned\x07[bold]k",
                              value=b"{}")
    deliver(api.producer, api.topics.dead_letters, "k", encode(letter))

    code, output = run(api, "dlq", "list")

    assert code == 0, output
    assert "\x1b" not in output and "\x07" not in output
    flat = output.replace("\n", "").replace(" ", "").replace("│", "")
    assert "\\x1b]0;pwned\\x07[bold]k" in flat and "[red]\\x1b[2Jx" in flat


def test_a_dead_letter_a_token_was_scrubbed_out_of_is_shown_as_such_and_never_requeued(api: RunningApi) -> None:
    token = meta_shaped_token()
    pasted = encode(RetryRequested(command_id="c-8", post_id="post-8", requested_at=datetime.now(UTC))).replace(
        b'"command_id"', b'"pasted":"' + token.encode() + b'","command_id"')
    letter = make_dead_letter(reason="invalid RetryRequested: pasted: Extra inputs are not permitted",
                              consumer="command-handler", source_topic=api.topics.commands, partition=1, offset=3,
                              key=b"post-8", value=pasted)
    assert letter.value_scrubbed
    deliver(api.producer, api.topics.dead_letters, "post-8", encode(letter))

    code, output = run(api, "dlq", "show", "0")
    assert code == 0 and "original message, with a token scrubbed out:" in output and token not in output
    code, output = run(api, "dlq", "requeue", "0", "--yes")
    assert code == 1
    assert "a token was scrubbed out of this message" in output and 'send "[redacted]" on' in output
    assert messages_on(api.bootstrap, api.topics.commands) == []


def test_dlq_show_says_a_message_too_large_to_keep_was_not_kept(api: RunningApi) -> None:
    letter = make_dead_letter(reason="invalid RetryRequested: note: too long", consumer="command-handler",
                              source_topic=api.topics.commands, partition=1, offset=3, key=b"post-8",
                              value=b"x" * 800_000)
    deliver(api.producer, api.topics.dead_letters, "post-8", encode(letter))

    code, output = run(api, "dlq", "show", "0")

    assert code == 0, output
    assert "original message:\n(not kept: the reason says why)" in output and "(no value)" not in output


def test_demo_shows_the_seeds_scenario(service_api: ServiceApi) -> None:
    result = CliRunner().invoke(app, ["demo"], env={
        "SMARTRETRY_API_URL": service_api.url, "SMARTRETRY_API_KEY": E2E_KEY,
        "SMARTRETRY_SANDBOX_URL": service_api.service.sandbox.base_url, "COLUMNS": "200"})
    output = result.output
    assert result.exit_code == 0, output
    lines = [line.strip() for line in output.splitlines()]
    expected = [
        "Publishing to both Facebook and Instagram...",
        "✅ Instagram published successfully",
        "❌ Post status updated to: failed",
        "🔄 Smart retry: Publishing only to Facebook (Instagram already succeeded)",
        "✅ Facebook published successfully",
        "✅ Post status updated to: posted",
        "🔄 Retried: Facebook (1 retry)",
    ]
    positions = [lines.index(line) for line in expected]
    assert positions == sorted(positions)
    assert f"❌ Facebook failed: {FB_ERROR}" in lines
    assert '"retried_platform": "facebook"' in output
    assert '"status": "posted"' in output



def test_the_demo_gives_its_account_a_token_the_sandbox_knows_now(service_api: ServiceApi) -> None:
    from publishers.sandbox import DEMO_IG_USER_ID, DEMO_PAGE_ID

    # Renewed once, on a sandbox that has been reset since: the stored token is one the sandbox no longer knows.
    forgotten = "sandbox-renewed-token-the-sandbox-forgot"
    service_api.service.stores.credentials.set_token("demo-renewed", forgotten, DEMO_PAGE_ID, DEMO_IG_USER_ID)

    result = CliRunner().invoke(app, ["demo", "--account", "demo-renewed"], env={
        "SMARTRETRY_API_URL": service_api.url, "SMARTRETRY_API_KEY": E2E_KEY,
        "SMARTRETRY_SANDBOX_URL": service_api.service.sandbox.base_url, "COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert "given a new token the sandbox knows now" in result.output
    assert "🔄 Retried: Facebook (1 retry)" in result.output
    stored = service_api.service.stores.credentials.get("demo-renewed")
    assert stored is not None and stored.user_token.get_secret_value() != forgotten


def test_demo_says_so_when_the_sandbox_takes_the_url_with_a_space(service_api: ServiceApi) -> None:
    # The service's sandbox does not refuse spaces, and the demo is not told where it is to turn that on.
    control = SandboxControl(service_api.service.sandbox.base_url)
    control.reject_spaces("facebook", False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nothing_there = probe.getsockname()[1]
    try:
        result = CliRunner().invoke(app, ["demo", "--account", "demo-open"], env={
            "SMARTRETRY_API_URL": service_api.url, "SMARTRETRY_API_KEY": E2E_KEY, "SMARTRETRY_SANDBOX_URL": "",
            "SMARTRETRY_SANDBOX_PORT": str(nothing_there), "COLUMNS": "200"})
    finally:
        control.reject_spaces("facebook", True)
        control.close()
    assert result.exit_code == 1, result.output
    assert "Facebook took the image URL with a space, so there is no failure to retry" in result.output
    assert "Insights after the failed attempt" not in result.output


def test_publish_and_retry_exit_with_1_when_the_post_ends_failed_and_0_once_it_is_posted(
        service_api: ServiceApi) -> None:
    env = {"SMARTRETRY_API_URL": service_api.url, "SMARTRETRY_API_KEY": E2E_KEY, "COLUMNS": "200"}
    post_id = f"cli-exit-{uuid.uuid4().hex[:8]}"
    failed = CliRunner().invoke(app, ["publish", "Autumn sale starts today", "--image-url",
                                      "https://cdn.example.com/autumn sale.jpg", "--target", "facebook",
                                      "--post-id", post_id, "--wait", "60"], env=env)
    assert failed.exit_code == 1, failed.output
    assert "Status: ❌ Failed" in failed.output

    fixed = CliRunner().invoke(app, ["retry", post_id, "--image-url", "https://cdn.example.com/autumn-sale.jpg",
                                     "--wait", "60"], env=env)
    assert fixed.exit_code == 0, fixed.output
    assert "Status: ✅ Posted" in fixed.output
    # The seed's console line, before the post: what the retry chose to publish.
    assert fixed.output.splitlines()[0] == "🔄 Smart retry: Publishing to Facebook (Facebook failed)"


def test_on_a_narrow_terminal_dead_letters_are_listed_two_lines_each_with_their_reason_whole(
        api: RunningApi) -> None:
    reason = "invalid RetryRequested: content.image_url: must be an http(s) URL, and the caption is too long"
    letter = make_dead_letter(reason=reason, consumer="command-handler", source_topic=api.topics.commands,
                              partition=2, offset=5, key=b"post-7", value=b"{}")
    deliver(api.producer, api.topics.dead_letters, "post-7", encode(letter))
    env = {"KAFKA_BOOTSTRAP_SERVERS": api.bootstrap, "SMARTRETRY_TOPIC_PREFIX": api.topics.prefix, "COLUMNS": "80"}
    result = CliRunner().invoke(app, ["dlq", "list"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("0  ") and f"{api.topics.commands}[2]@5  command-handler  key post-7" in lines[0]
    assert reason in result.output.replace("\n    ", " ")
    assert "┃" not in result.output  # no table squeezed into 80 columns


def test_an_import_set_aside_for_its_partition_is_requeued_onto_its_posts_partition(api: RunningApi) -> None:
    from schemas.events import LegacyInsightsImported

    original = encode(LegacyInsightsImported(event_id="e-1", post_id="post-imported", occurred_at=datetime.now(UTC),
                                             publish_target="facebook", document={"status": "posted"}))
    letter = make_dead_letter(reason="... came on partition 4, not on its post's ...", consumer="projector",
                              source_topic=api.topics.post_events, partition=4, offset=0, key=b"old-system-row-17",
                              value=original)
    deliver(api.producer, api.topics.dead_letters, "old-system-row-17", encode(letter))
    code, output = run(api, "dlq", "requeue", "0", "--yes")
    assert code == 0, output
    # Keyed by its post id, so the partitioner puts it on its post's partition.
    assert messages_on(api.bootstrap, api.topics.post_events) == [("post-imported", original)]


def test_the_processor_command_logs_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    # As `run` starts it: JSON lines when asked, with times, and repeated warnings merged (smartretry.logs).
    import smartretry.logs
    import streams.projector

    configured: list[tuple[str, str]] = []
    ran: list[str | None] = []

    async def run_projector(settings: Settings, **_options: object) -> None:
        ran.append(settings.kafka_bootstrap_servers)

    monkeypatch.setattr(smartretry.logs, "configure", lambda level, form: configured.append((level, form)))
    monkeypatch.setattr(streams.projector, "run_projector", run_projector)
    monkeypatch.setattr("streams.gc_tuning.disable_gc", lambda: None)
    result = CliRunner().invoke(app, ["processor"], env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                                                         "SMARTRETRY_LOG_FORMAT": "json",
                                                         "SMARTRETRY_LOG_LEVEL": "DEBUG"})
    assert result.exit_code == 0, result.output
    assert configured == [("DEBUG", "json")] and ran == ["127.0.0.1:1"]


def test_while_a_platforms_call_is_checked_the_cli_says_why_its_result_takes_minutes(service_api: ServiceApi) -> None:
    # Meta's 500: the post may be on the Page all the same, so it is looked up before it goes out again, which takes
    # up to the attempt's lease. The wait is said as it begins, not left to a spinner (or, in a script, to silence).
    control = SandboxControl(service_api.service.sandbox.base_url)
    control.fail_next("facebook", "photos", code=1, http_status=500)
    env = {"SMARTRETRY_API_URL": service_api.url, "SMARTRETRY_API_KEY": E2E_KEY, "COLUMNS": "200"}
    result = CliRunner().invoke(app, [
        "publish", "Checked before it goes out again", "--image-url", "https://cdn.example.com/autumn-sale.jpg",
        "--target", "facebook", "--post-id", f"cli-checked-{uuid.uuid4().hex[:8]}", "--wait", "8"], env=env)
    control.close()

    assert result.exit_code == 0, result.output
    told = [line for line in result.output.splitlines() if line.startswith("⏳ Facebook: ")]
    # Each reason once, as the post says it: checking, then (once looked up with no post yet) until when.
    assert told and len(told) == len(set(told)), result.output
    assert all("Facebook photo upload failed: 500" in line for line in told), told
    assert any("checking whether the post went out" in line or "looked up again when its lease ends" in line
               for line in told), told
