"""Operator commands: publish, retry, force, show, dead letters, account tokens, and the product note's demo.

Commands about posts and accounts go through the HTTP API (so they are validated and authorized like
any other client); the dead-letter commands read and write Kafka directly, since the dead letters are
only there. The API's address is `--api-url` (or SMARTRETRY_API_URL), else the configured host and port;
its key is SMARTRETRY_API_KEY.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import typer
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from publishers.redact import scrub
from schemas.commands import says_nothing
from schemas.common import (
    CONTAINER_CLEARED,
    ID_PATTERN,
    MAX_PLATFORM_WAIT_S,
    PLATFORM_LABELS,
    UNDER_WAY_NOTE,
    Platform,
    platforms_of,
)
from schemas.deadletters import DeadLetter, DeadLetterRequeued
from schemas.envelope import DecodeError, decode_command, decode_event, json_object
from schemas.ids import new_id, post_id_for
from smartretry.settings import Settings, load_settings
from streams.kafka import LIBRDKAFKA_LOG, client_config, deliver, producer

ops = typer.Typer(no_args_is_help=True)
dlq = typer.Typer(help="Dead letters: what a consumer could not use, why, and the original bytes.",
                  no_args_is_help=True)
accounts = typer.Typer(help="Account credentials (re-authentication); tokens are never shown.", no_args_is_help=True)
ops.add_typer(dlq, name="dlq")
ops.add_typer(accounts, name="accounts")

# What the service and its users wrote (captions, platform errors, reasons) is printed as it is: Rich markup in it
# ("[/]") would be taken for styling, or fail to parse.
console = Console(markup=False)
errors = Console(stderr=True, markup=False, highlight=False)


def _error(message: str) -> None:
    # The API's words may quote a platform's message: its control characters are shown, not obeyed.
    # One line, left to the terminal to wrap: a script that reads stderr gets the whole message on it.
    errors.print(Text.assemble(("error:", "red"), " ", shown_text(message)), soft_wrap=True)

# Seconds a command-line client waits for results after the API answered 202.
POLL_SECONDS = 0.25
DEFAULT_WAIT_SECONDS = 120.0

ApiUrl = typer.Option(None, "--api-url", envvar="SMARTRETRY_API_URL", help="The API's base URL.")
AsJson = typer.Option(False, "--json", help="Print the API's JSON answer.")


def _one_of(*choices: str) -> Callable[[str | None], str | None]:
    """An option's check: one of `choices`, else a usage error (exit status 2) before anything is sent."""
    def checked(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return checked


def _said(value: str) -> str:
    """A text that must say something (a forced republish's reason): blanks alone are a usage error."""
    if says_nothing(value):
        raise typer.BadParameter("must say something: it is recorded with the republish (blanks and invisible "
                                 "characters alone say nothing)")
    return value.strip()


def _checked_id(value: str | None) -> str | None:
    """An id as the service takes it: it goes into the API's paths, where a `/` or `..` would name another route."""
    if value is not None and not ID_PATTERN.fullmatch(value):
        raise typer.BadParameter(f"{shown_text(value)!r} is no id: an id is up to 128 letters, digits and _.:- "
                                 "(not first)")
    return value


CommandId = typer.Option(None, "--command-id", callback=_checked_id, help=(
    "Name the command (default: a new id, made here). The same id again is the same command, never a second one: "
    "what to give when a command's fate is unknown (the CLI says so)."))
Wait = typer.Option(DEFAULT_WAIT_SECONDS, "--wait", help=(
    "Seconds to wait for the platforms' results once the API has answered (the API itself waits for them up to "
    "SMARTRETRY_API_WAIT_SECONDS first)."))


# --------------------------------------------------------------------------------------------- the API client


class ApiError(Exception):
    def __init__(self, message: str, status: int | None = None, problem: str = "") -> None:
        super().__init__(message)
        self.status, self.problem = status, problem


class NoAnswer(ApiError):
    """A request that was sent, but not answered (a timeout, a connection broken): it may have been carried out.
    `again` says how to send it again as the same request."""

    def __init__(self, message: str, again: str | None) -> None:
        super().__init__(message)
        self.again = again


# The exit status of a command whose request was sent and not answered: neither done (0) nor refused (1).
UNANSWERED = 3
# A post that went out for certain, whose id the platform's answers did not give (see the README).
UNKNOWN_LINK = "(its address could not be told from {label}'s answers: see the account)"
# One an operator recorded (`smartretry resolve`) without its address.
UNGIVEN_LINK = "(its address was not given when it was recorded: see the account)"


class Api:
    """A small client of the service's API that turns its errors into one line for the operator."""

    def __init__(self, base_url: str | None, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.base_url = (base_url or self.settings.api_url
                         or f"http://{self.settings.api_host}:{self.settings.api_port}").rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(self.settings.api_wait_seconds + 30),
                                   headers={"X-API-Key": self.settings.api_key.get_secret_value()})

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str, *, again: str | None = None, **kwargs: Any) -> httpx.Response:
        """The API's answer to a request; `again`: how to send it again as the same request, should it be sent and
        not answered."""
        try:
            response = self.client.request(method, path, **kwargs)
        except KeyboardInterrupt:
            if again is None:
                raise
            # Stopped while the API had the request (it waits for the results before it answers): it may go out all
            # the same, so what sends it again as the same command is said.
            errors.print("Interrupted: the request was sent to the API, which may carry it out all the same.",
                         highlight=False, soft_wrap=True)
            errors.print(again, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except httpx.UnsupportedProtocol:
            raise ApiError(f"the API's address {_shown_address(self.base_url)} (--api-url, or SMARTRETRY_API_URL) is "
                           "no http:// or https:// URL: give it as http://host:port") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # No connection, so nothing was sent.
            raise ApiError(f"no API at {_shown_address(self.base_url)} ({type(exc).__name__}): start the service "
                           "with `smartretry run` (or `make run`), or point --api-url at it") from None
        except httpx.TransportError as exc:
            if method == "GET":
                raise ApiError(f"the API at {_shown_address(self.base_url)} did not answer ({type(exc).__name__}): "
                               "try again once the service answers") from None
            # Sent, perhaps whole: the API may have carried it out. Sent again as a new command, a publish would go
            # out twice.
            raise NoAnswer(f"the request was sent to the API at {_shown_address(self.base_url)}, but no answer came "
                           f"({type(exc).__name__}): whether it was carried out is not known", again) from None
        if response.status_code >= 400:
            problem = _problem(response)
            raise ApiError(f"{response.status_code}: {problem}", response.status_code, problem)
        return response

    def wait_for(self, post_id: str, command_id: str, timeout: float,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """The post's detail once the command has all its results (or the rest waits on a platform's own time), or
        as it stands at `timeout` (None: not seen yet). `progress` is given each detail read meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Held: only what waits on a platform's own time past this wait (a rate limit's hour), not seconds.
                remaining = round(min(max(0.0, deadline - time.monotonic()), MAX_PLATFORM_WAIT_S), 3)
                answer = self.client.get(f"/posts/{post_id}", params={"command_id": command_id, "within": remaining})
            except httpx.TransportError as exc:
                raise ApiError(f"the API at {self.base_url} stopped answering while the results were awaited "
                               f"({type(exc).__name__}); the command was accepted: `smartretry show {post_id}` "
                               "once the service is back") from None
            detail: dict[str, Any] | None = answer.json() if answer.status_code == 200 else None
            if answer.status_code == 503:
                # Not the command's failure: the API cannot read the results just now (its database away).
                raise ApiError(f"the command was accepted, but its results cannot be shown just now "
                               f"({_problem(answer)}): `smartretry show {post_id}` in a moment", 503)
            if answer.status_code not in (200, 404):
                self.call("GET", f"/posts/{post_id}")  # raises with the API's reason
            if detail is not None and progress is not None:
                progress(detail)
            if (detail is not None and (detail["command"]["settled"] or detail["command"].get("held"))) \
                    or time.monotonic() > deadline:
                # Held: what remains waits for the platform's own time (an hour's rate limit), said in its answer.
                return detail
            time.sleep(POLL_SECONDS)

    def page_url(self, post_id: str) -> str:
        return f"{self.base_url}/ui/posts/{post_id}"


# What an answer that is not the API's is told as (another server at --api-url).
NOT_THE_API = "the answer is not this service's API's: is --api-url (or SMARTRETRY_API_URL) the API's address?"


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return scrub(response.text[:500]) or NOT_THE_API
    detail = body.get("detail") if isinstance(body, dict) else None
    if detail is None:
        return NOT_THE_API
    if isinstance(detail, list):
        parts = []
        for error in (d for d in detail if isinstance(d, dict)):
            where, message = ".".join(str(p) for p in error.get("loc", [])[1:]), str(error.get("msg"))
            # A message that names its field itself ("content.caption contains an access token") is not led by it.
            parts.append(message if not where or message.startswith(where) else f"{where}: {message}")
        return _as_commands("; ".join(parts))
    return _as_commands(str(detail))


# The API's advice names its routes; on the command line, the commands that do the same. (An id ends before
# the punctuation that may follow it.)
_ID = r"([^\s),;]+)"
_ROUTES_AS_COMMANDS = (
    (re.compile(rf"GET /posts/{_ID}"), r"smartretry show \1"),
    (re.compile(rf"POST /posts/{_ID}/retry"), r"smartretry retry \1"),
    (re.compile(rf"POST /posts/{_ID}/republish naming (facebook|instagram) in platforms, with the account"),
     r"smartretry force \1 --platform \2 --account NAME --reason ..."),
    (re.compile(rf"POST /posts/{_ID}/republish naming (facebook|instagram) in platforms"),
     r"smartretry force \1 --platform \2 --reason ..."),
    (re.compile(rf"POST /posts/{_ID}/resolve naming (facebook), published, with its id"),
     r"smartretry resolve \1 \2 --published-as POST_ID"),
    (re.compile(rf"POST /posts/{_ID}/resolve naming (instagram), published, with its id"),
     r"smartretry resolve \1 \2 --published-as MEDIA_ID"),
    (re.compile(rf"POST /posts/{_ID}/republish"), r"smartretry force \1 --reason ..."),
    (re.compile(rf"connect it \(its token, page_id and ig_user_id\) with PUT /accounts/{_ID}/token"),
     r"connect it with smartretry accounts set-token \1 --page-id ... --ig-user-id ..."),
    (re.compile(rf"set its page_id and ig_user_id with PUT /accounts/{_ID}/token"),
     r"set them with smartretry accounts set-token \1 --page-id ... --ig-user-id ..."),
    (re.compile(rf"set its page_id with PUT /accounts/{_ID}/token"),
     r"set it with smartretry accounts set-token \1 --page-id ..."),
    (re.compile(rf"set its ig_user_id with PUT /accounts/{_ID}/token"),
     r"set it with smartretry accounts set-token \1 --ig-user-id ..."),
    (re.compile(rf"right Page id with PUT /accounts/{_ID}/token"),
     r"right Page id with smartretry accounts set-token \1 --page-id ..."),
    (re.compile(rf"right Instagram account id with PUT /accounts/{_ID}/token"),
     r"right Instagram account id with smartretry accounts set-token \1 --ig-user-id ..."),
    (re.compile(rf"PUT /accounts/{_ID}/token"), r"smartretry accounts set-token \1"),
    (re.compile(r"send it as X-API-Key[^.;]*"), "set SMARTRETRY_API_KEY to the service's API key"),
    (re.compile(r"then republish if"), "then republish (smartretry force) if"),
    (re.compile(r"name the account to publish it with"), "name the account to publish it with (--account NAME)"),
    # The API's field names, as the command line's options.
    (re.compile(r"\bcontent\.image_url\b"), "an image (--image-url)"),
    # `publish` takes the caption as its argument, `retry` as --caption: named for both.
    (re.compile(r"\bcontent\.caption\b"), "the caption (CAPTION, or a retry's --caption)"),
    (re.compile(r"\bcontent\.link\b"), "--link"),
)


def _as_commands(problem: str) -> str:
    for route, command in _ROUTES_AS_COMMANDS:
        problem = route.sub(command, problem)
    return problem


# The user name and password part of an address (`https://user:password@host`), up to its last "@" whatever the
# address looks like (a password may hold "/" or "#", and an address without its scheme is read in other ways).
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?.*@", re.DOTALL)


def _shown_address(url: str) -> str:
    """An address as an error quotes it: scrubbed, and with "…" for a user name and password (`https://…@host`)."""
    return scrub(_USERINFO.sub(lambda m: f"{m.group(1) or ''}…@", url.strip()))


def _unreadable(exc: Exception, url: str) -> str:
    """What httpx says of an address it cannot read. Its words quote the part they could not read, which may be anything
    the user pasted: scrubbed, and left out where the address holds a password (`user:pass/word@host` is read with
    the password's start as the port)."""
    said = scrub(str(exc))
    return said.split(":", 1)[0] if "@" in url else said


def _not_a_sandbox(exc: Exception, url: str) -> str:
    """Why a sandbox's control API did not take a call, as the end of "the sandbox's address X ..."."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"answered {exc.response.status_code} to the sandbox's control API: it is no sandbox"
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return f"is no http:// URL ({_unreadable(exc, url)})"
    return f"did not answer ({type(exc).__name__})"


@contextmanager
def api_client(api_url: str | None) -> Iterator[Api]:
    try:
        api = Api(api_url)
    except httpx.InvalidURL as exc:
        _error(f"the API's address (--api-url, or SMARTRETRY_API_URL) is no URL: {_unreadable(exc, api_url or '')}")
        raise typer.Exit(2) from None
    try:
        yield api
    except NoAnswer as exc:
        _error(str(exc))
        if exc.again is not None:
            errors.print(exc.again, soft_wrap=True)
        raise typer.Exit(UNANSWERED) from None
    except ApiError as exc:
        _error(str(exc))
        if (again := _again(exc)) is not None:
            errors.print(again, soft_wrap=True)  # the options on one line, to copy whole
            # Kafka did not take the command in time, but it may still arrive: as unknown as a request unanswered.
            raise typer.Exit(UNANSWERED) from None
        raise typer.Exit(1) from None
    finally:
        api.close()


def _again(exc: ApiError) -> str | None:
    """The API's advice on a command Kafka may still take ("send the same request again with ..."), in the CLI's
    terms: the same command line with the ids it names."""
    if exc.status != 503 or "Send the same request again" not in exc.problem:
        return None
    named = dict(re.findall(r'"(command_id|post_id)": "([^"]+)"', exc.problem))
    if "command_id" not in named:
        return None
    return _send_again_as(named["command_id"], named.get("post_id"))


def _send_again_as(command_id: str, post_id: str | None) -> str:
    """How to send a command line again as the same command: the options to add, on a line of their own."""
    options = f"--command-id {command_id}" + (f" --post-id {post_id}" if post_id else "")
    them = "them" if post_id else "it"
    return (f"To send it again as the same command, which cannot publish twice (without {them}, a new command could), "
            f"run the same command line with these added:\n  {options}")


def _settled(api: Api, answer: httpx.Response, what: str, wait: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the product note's response, the post's detail), waiting up to `wait` seconds if the API answered 202."""
    response: dict[str, Any] = answer.json()
    post_id, command_id = response["post"]["id"], response.get("command_id")
    if answer.status_code == 202 and command_id:
        note = str(response.get("note") or "")
        if note.startswith("queued behind") and UNDER_WAY_NOTE not in note:
            # Queued behind the post's automatic retries (up to a rate limit's hour): said now, not after the wait. (One
            # left to a platform's own wait is waited for as any other: `wait_for` ends at once when that wait outlasts
            # this one; so is one queued behind a publish under way, which runs once that publish has its result.)
            try:
                return response, api.call("GET", f"/posts/{post_id}").json()
            except ApiError:
                return response, None
        if UNDER_WAY_NOTE in note:
            # Waited for like any command, once the publish under way has its result: said now, not after the wait.
            errors.print(f"⏳ This command is {note}.", highlight=False, soft_wrap=True)
        # Why a platform's result takes minutes (its call got no answer to trust, and the platform is asked whether
        # the post went out before it is published again), said once per reason as it comes: on the terminal above
        # the spinner, else on stderr, so a script's log shows it too.
        told: set[str] = set()
        out = console if console.is_terminal else errors

        def tell(detail: dict[str, Any]) -> None:
            for platform, why in (detail.get("outcome_unknown") or {}).items():
                line = f"⏳ {PLATFORM_LABELS.get(platform, platform)}: {_one_line(str(why))}"
                if line not in told:
                    told.add(line)
                    out.print(shown_text(line), highlight=False, soft_wrap=True)

        try:
            with console.status(f"{what}: waiting for the platforms' results ..."):
                detail = api.wait_for(post_id, command_id, wait, tell)
        except KeyboardInterrupt:
            # Only the waiting stops: the command was accepted and goes on.
            errors.print(f"Interrupted while waiting for the results: post {post_id}'s command {command_id} was "
                         f"accepted and goes on (smartretry show {post_id}).", highlight=False, soft_wrap=True)
            errors.print(_send_again_as(command_id, post_id if what == "Publishing" else None), highlight=False,
                         soft_wrap=True)
            raise typer.Exit(130) from None
        except ApiError as exc:
            # Accepted, whatever kept its results from being shown (the API's database away, the API gone): no
            # failure, reported as still publishing (exit status 0), with the ids that make it the same command if it
            # is sent again (a script that sends it again without them would publish twice).
            errors.print(f"warning: {exc}", highlight=False, markup=False, soft_wrap=True)
            errors.print(_send_again_as(command_id, post_id if what == "Publishing" else None), soft_wrap=True)
            return response, None
        if detail is not None and (refused := detail["command"].get("refused")):
            # Decided to publish nothing (another retry published it first): refused, as the API answers it at once.
            problem = _as_commands(str(refused))
            raise ApiError(f"409: {problem}", 409, problem)
        if detail is not None and (detail["command"]["settled"] or detail["command"].get("held")):
            response = detail["command"]["response"] or response
        return response, detail
    return response, api.call("GET", f"/posts/{post_id}").json()


def _report(api: Api, response: dict[str, Any], detail: dict[str, Any] | None, as_json: bool) -> None:
    if as_json:
        _print_json(response)
    elif detail is None:
        console.print(f"Post {response['post']['id']}: accepted, no results yet. "
                      f"See `smartretry show {response['post']['id']}`.", highlight=False)
    else:
        # The product note's console line for the command ("🔄 Smart retry: Publishing only to Facebook (...)"),
        # once decided.
        entry = next((h for h in detail.get("history", []) if h.get("command_id") == response.get("command_id")), None)
        if entry is not None and entry.get("note"):
            console.print(_one_line(str(entry["note"])), highlight=False, soft_wrap=True)
        print_post(detail, api.page_url(detail["id"]))
    # With --json, stdout is the JSON alone (for a script): what is said besides goes to stderr.
    said = errors if as_json else console
    still_publishing = response.get("pending") and not (detail and detail.get("command", {}).get("settled"))
    if still_publishing and response.get("note"):
        note = str(response["note"])
        said.print(f"⏳ This command is {note}." if note.startswith("queued behind") else f"⏳ {note}.",
                   highlight=False)
    # Once the command is decided (its answer is in: a command queued behind another has none yet) and another
    # platform's automatic retry is still to come: a platform left failed with nothing to come by itself waits for the
    # user, whatever the answer's note says of the others' waits.
    decided = detail is not None and (detail.get("command") or {}).get("response") is not None
    waiting = _waiting_for_you(detail) if detail is not None and decided and detail.get("automatic_retry") else []
    if still_publishing and detail is not None and detail.get("status") == "failed" and waiting:
        # Another platform's automatic retry is still to come, but this one's failure waits for the user: however that
        # retry ends, the post stays failed until they act (said above), so this is a failure to scripts too.
        retried = " and ".join(PLATFORM_LABELS[p] for p in detail.get("automatic_retry") or {} if p not in waiting)
        said.print(f"Failed: {' and '.join(PLATFORM_LABELS[p] for p in waiting)} needs you (above)"
                   + (f"; the service retries {retried} by itself" if retried else "")
                   + f". `smartretry show {detail['id']}` for the outcome.", highlight=False)
        raise typer.Exit(1)
    if still_publishing and detail is not None and detail.get("status") == "failed" and (
            detail.get("automatic_retry") or response.get("note")):
        # Failed for now, with an automatic retry to come (shown above): not the end of it yet.
        said.print(f"Not final: the service retries by itself; `smartretry show {detail['id']}` for the outcome.",
                   highlight=False)
    elif still_publishing:
        said.print("Still publishing: results are not all in yet.", highlight=False)
    elif detail is not None and detail.get("status") == "failed":
        # Scripts tell a post that failed from one that went out (or is still going out) by the exit status.
        raise typer.Exit(1)


def _waiting_for_you(detail: dict[str, Any]) -> list[Platform]:
    """The platforms whose latest result failed with nothing under way or to come by itself for them: each waits for
    the user (what it needs is in `needed_action`), whatever the others' automatic retries bring."""
    automatic = detail.get("automatic_retry") or {}
    latest = {a["platform"]: a for a in detail.get("attempts", [])}  # oldest first: each platform's latest stays
    return [result["platform"] for result in detail["insights"].get("publish_results", [])
            if result["success"] is False and result["platform"] not in automatic
            and latest.get(result["platform"], {}).get("outcome") not in ("under way", "not known yet")]


def _clock(at: str) -> str:
    """An API time ("2026-11-29T04:14:17.000Z") as the page says it: its time of day, with its date when not today's
    (UTC)."""
    same_day = at[:10] == datetime.now(UTC).strftime("%Y-%m-%d")
    return f"{at[11:19]} UTC" if same_day else f"{at[:10]} {at[11:19]} UTC"


def _automatic_retries(post: dict[str, Any]) -> list[str]:
    """A post's automatic retries to come, as the page says them: when, by when, or that they are late."""
    lines = []
    for platform, at in (post.get("automatic_retry") or {}).items():
        by = (post.get("automatic_retry_by") or {}).get(platform)
        if platform in (post.get("automatic_retry_overdue") or ()):
            when = f" (it was due {'at ' + _clock(at) if at else 'by ' + _clock(by or '')}: the service may be " \
                   "away or behind)"
        else:
            when = f" at {_clock(at)}" if at else f" by {_clock(by)}" if by else ""
        lines.append(f"🔄 {PLATFORM_LABELS[platform]} will be retried automatically{when}")
    return lines


def print_post(detail: dict[str, Any], page_url: str | None = None) -> None:
    """The post as the product note's detail view says it: status, errors, links, needed actions, retries."""
    status = {"failed": "❌ Failed", "posted": "✅ Posted", "publishing": "⏳ Publishing"}[detail["status"]]
    console.print(f"Post {detail['id']}  Status: {status}", highlight=False)
    if (detail.get("content") or {}).get("caption"):
        # Which post this is, at a glance: its caption's start, as the list shows it.
        console.print(f"  \"{_one_line(detail['content']['caption'], CAPTION_SHOWN)}\"", highlight=False)
    results = {r["platform"]: r for r in detail["insights"].get("publish_results", [])}
    # Being published again (its latest attempt under way, or without a known outcome yet): an earlier failure is no
    # longer the platform's state, as the page says it.
    latest = {a["platform"]: a for a in detail.get("attempts", [])}  # oldest first: each platform's latest stays
    again = {p for p, a in latest.items() if a["outcome"] in ("under way", "not known yet")}
    unknown = detail.get("outcome_unknown", {})
    for platform, result in results.items():
        label = PLATFORM_LABELS[platform]
        if not result["success"] and platform in again:
            if platform not in unknown:  # that one has its own line, below
                console.print(f"  ⏳ {label}: publishing again...", highlight=False)
        elif result["success"]:
            # As the page says it: an id alone is no address to follow.
            unknown_link = UNGIVEN_LINK if platform in detail.get("recorded_by_operator", ()) \
                else UNKNOWN_LINK.format(label=label)
            link = detail.get("links", {}).get(platform) or " ".join(
                part for part in (result.get("postId"), unknown_link) if part)
            # On one line however narrow the output: a link cut in two cannot be followed.
            console.print(f"  ✅ {label}: Published  {link}", highlight=False, soft_wrap=True)
            if kept := detail.get("kept_from_before", {}).get(platform):
                console.print(f"     ℹ️ {_one_line(kept)}", highlight=False)
            if platform in again and platform not in unknown:  # a forced republish under way
                console.print(f"  ⏳ {label}: publishing again...", highlight=False)
        else:
            # On its line: a message's own line breaks would read as the command's next lines.
            console.print(f"  ❌ {label}: {_one_line(str(result.get('error')))}", highlight=False)
    for platform, made in detail.get("earlier_posts", {}).items():
        for post in made:
            label = PLATFORM_LABELS[platform]
            console.print(f"  Earlier {label} post, still on {label} unless deleted there: "
                          f"{post['link'] or 'media id ' + post['post_id']}", highlight=False, soft_wrap=True)
    if detail["status"] == "publishing":
        # A platform on its first attempt has no result yet: it is said too, as the page says it.
        for platform in platforms_of(detail["publish_target"]) if detail.get("publish_target") else ():
            if platform not in results and platform not in unknown:
                console.print(f"  ⏳ {PLATFORM_LABELS[platform]}: publishing...", highlight=False)
    if detail.get("error_message") and not any(not r["success"] for r in results.values()):
        # A failure with no platform's result to show it by (an old document that kept only its message).
        console.print(f"  ❌ {_one_line(detail['error_message'])}", highlight=False)
    for platform, why in unknown.items():
        console.print(f"  ⏳ {PLATFORM_LABELS[platform]}: whether the post went out is not known yet: "
                      f"{shown_text(why)}",
                      highlight=False)
        later = detail.get("not_published_from", {}).get(platform)
        until = f" (from {_clock(later)}: {PLATFORM_LABELS[platform]} may still hold the request until then)" \
            if later else ""
        console.print(f"     If it stays so, check {PLATFORM_LABELS[platform]} and say what you found: "
                      f"smartretry resolve {detail['id']} {platform} --published-as POST_ID | --not-published{until}",
                      highlight=False, soft_wrap=True)
    for platform, action in detail.get("needed_action", {}).items():
        how = ""
        if action.startswith("re-authenticate") and detail.get("account"):
            # As the page says it: how, and that one token serves both platforms.
            how = (f" (store the account's new token: smartretry accounts set-token {detail['account']}; one token "
                   "serves both platforms)")
        elif action == "fix the image URL":
            # As the page's form does it: the correction goes with the retry.
            how = f" (then retry with it: smartretry retry {detail['id']} --image-url URL)"
        elif action == "fix the post":
            fields = "--caption TEXT, --image-url URL or --link URL" if platform == "facebook" \
                else "--caption TEXT or --image-url URL"  # Instagram takes no link
            how = f" (then retry with it: smartretry retry {detail['id']} {fields})"
        console.print(f"  Needed for {PLATFORM_LABELS[platform]}: {_as_commands(action)}{how}", highlight=False,
                      soft_wrap=True)
    for line in _automatic_retries(detail):
        console.print(f"  {line}", highlight=False)
    if detail.get("retry_preview"):
        console.print(f"  {detail['retry_preview']}", highlight=False)
    if detail.get("retried"):
        console.print(f"  {detail['retried']}", highlight=False)
    if page_url:
        console.print(f"  Page: {page_url}", highlight=False)


def _content(caption: str | None, image_url: str | None, link: str | None) -> dict[str, str]:
    return {k: v for k, v in (("caption", caption), ("image_url", image_url), ("link", link)) if v is not None}


def _print_json(document: Any) -> None:
    console.print_json(json.dumps(document, ensure_ascii=False))


# --------------------------------------------------------------------------------------------- posts


@ops.command()
def publish(
    caption: str = typer.Argument(..., help="The post's text."),
    image_url: str | None = typer.Option(None, help="Image to publish (Instagram needs one)."),
    link: str | None = typer.Option(None, help="A link for the Facebook post."),
    target: str = typer.Option("both", help="facebook, instagram or both.", callback=_one_of("facebook", "instagram",
                                                                                              "both")),
    account: str = typer.Option("demo", callback=_checked_id, help="The account whose credentials publish it."),
    post_id: str | None = typer.Option(None, callback=_checked_id,
                                       help="Name the post (default: one fixed by the command id)."),
    command_id: str | None = CommandId,
    as_json: bool = AsJson,
    wait: float = Wait,
    api_url: str | None = ApiUrl,
) -> None:
    """Publish a post and show each platform's result."""
    # Named here, before sending: a request whose answer is lost is sent again as the same command and post, which
    # the service publishes once.
    command_id = command_id or new_id()
    post_id = post_id or post_id_for(command_id)
    body: dict[str, Any] = {"content": {"caption": caption, **_content(None, image_url, link)},
                            "publish_target": target, "account": account, "post_id": post_id, "command_id": command_id}
    with api_client(api_url) as api:
        with console.status("Publishing ..."):
            answer = api.call("POST", "/posts", json=body, again=_send_again_as(command_id, post_id))
        response, detail = _settled(api, answer, "Publishing", wait)
        _report(api, response, detail, as_json)


@ops.command()
def retry(
    post_id: str = typer.Argument(..., callback=_checked_id, help="The post to retry."),
    image_url: str | None = typer.Option(None, help="Corrected image URL."),
    caption: str | None = typer.Option(None, help="Corrected caption."),
    link: str | None = typer.Option(None, help="Corrected link."),
    account: str | None = typer.Option(None, callback=_checked_id,
                                       help="The account to publish with (a post imported without one)."),
    command_id: str | None = CommandId,
    as_json: bool = AsJson,
    wait: float = Wait,
    api_url: str | None = ApiUrl,
) -> None:
    """Retry a post: only the platforms that failed are published again."""
    command_id = command_id or new_id()
    correction = _content(caption, image_url, link)
    body = {key: value for key, value in (("content", correction), ("account", account), ("command_id", command_id))
            if value}
    with api_client(api_url) as api:
        try:
            with console.status("Retrying ..."):
                answer = api.call("POST", f"/posts/{post_id}/retry", json=body, again=_send_again_as(command_id, None))
            # Refused also when decided after the API's wait (another retry of the post published it first).
            response, detail = _settled(api, answer, "Retrying", wait)
        except ApiError as refused:
            if refused.status != 409 or not refused.problem.startswith("Nothing to retry"):
                raise
            # Not an error: every platform it targets went out (or is going out). Said so, with the post; with
            # --json on stderr, so that stdout is the post's JSON alone.
            said = errors if as_json else console
            if "; wait for its result" in refused.problem:
                # Forcing now would publish that platform again once its attempt ends.
                nothing = refused.problem.split("; wait for its result", 1)[0]
                said.print(f"{nothing}. Wait for its result (smartretry show {post_id}), then retry if it failed.",
                           highlight=False)
            else:
                nothing = refused.problem.split("; to publish again anyway", 1)[0]
                said.print(f"{nothing}. To publish again anyway: smartretry force {post_id} --reason ...",
                           highlight=False)
            detail = api.call("GET", f"/posts/{post_id}").json()
            if as_json:
                _print_json(detail)
            else:
                print_post(detail, api.page_url(post_id))
            if detail["status"] == "failed":
                raise typer.Exit(1) from None
            return
        _report(api, response, detail, as_json)


def _platforms_named(value: list[str] | None) -> list[str] | None:
    """The platforms --platform names, each once, or a usage error (exit 2) before anything is sent."""
    if not value:
        return None
    named = list(dict.fromkeys(p.strip().lower() for p in value))
    for platform in named:
        _one_of("facebook", "instagram")(platform)
    return named


OnlyPlatforms = typer.Option(None, "--platform", callback=_platforms_named,
                             help="Only this platform (facebook or instagram; may be given twice). Default: every "
                                  "platform of the post.")


@ops.command()
def force(
    post_id: str = typer.Argument(..., callback=_checked_id, help="The post to publish again."),
    reason: str = typer.Option(..., callback=_said, help="Why (recorded with the republish)."),
    platform: list[str] | None = OnlyPlatforms,
    image_url: str | None = typer.Option(None, help="Corrected image URL, published from now on."),
    caption: str | None = typer.Option(None, help="Corrected caption, published from now on."),
    link: str | None = typer.Option(None, help="Corrected link, published from now on."),
    account: str | None = typer.Option(None, callback=_checked_id,
                                       help="The account to publish with (a post imported without one)."),
    command_id: str | None = CommandId,
    as_json: bool = AsJson,
    wait: float = Wait,
    yes: bool = typer.Option(False, "--yes", "-y", help="Republish without being asked first."),
    api_url: str | None = ApiUrl,
) -> None:
    """Publish a post again on every platform (or those given with --platform), even those where it succeeded (the
    product note's case 4): a new post on each platform, beside any already there (the first one stays there)."""
    if not yes and not sys.stdin.isatty():
        where = " and ".join(PLATFORM_LABELS[p] for p in platform) if platform else "each platform"
        _error(f"This publishes the post again: a new post on {where}, beside any already there (a platform's post is "
               "not edited or replaced). Add --yes to republish without being asked.")
        raise typer.Exit(2)
    command_id = command_id or new_id()
    correction = _content(caption, image_url, link)
    with api_client(api_url) as api:
        # The post as this republish is decided on: published again after this read (while the user is asked, by a
        # colleague or the service's own retry), it publishes nothing rather than a second new post. (Each run reads
        # for itself: the same command run twice, one after the other, is two republishes.)
        seen = len(api.call("GET", f"/posts/{post_id}").json().get("attempts") or [])
        if not yes:
            where = " and ".join(PLATFORM_LABELS[p] for p in platform) if platform else "each platform"
            typer.confirm(f"This publishes the post again: a new post on {where}, beside any already there (a "
                          "platform's post is not edited or replaced). Republish?", abort=True)
        body = {"reason": reason, **({"platforms": platform} if platform else {}),
                **({"content": correction} if correction else {}),
                **({"account": account} if account else {}), "command_id": command_id, "seen_attempts": seen}
        with console.status("Republishing ..."):
            answer = api.call("POST", f"/posts/{post_id}/republish", json=body,
                              again=_send_again_as(command_id, None))
        response, detail = _settled(api, answer, "Republishing", wait)
        _report(api, response, detail, as_json)


@ops.command()
def resolve(
    post_id: str = typer.Argument(..., callback=_checked_id, help="The post whose attempt is waiting for a result."),
    platform: str = typer.Argument(..., callback=_one_of("facebook", "instagram"), help="facebook or instagram."),
    published_as: str | None = typer.Option(None, help="It went out: the post's id on the platform."),
    not_published: bool = typer.Option(False, "--not-published", help="It did not go out."),
    permalink: str | None = typer.Option(None, help="The post's address, with --published-as."),
    attempt_id: str | None = typer.Option(None, help=(
        "The attempt meant, checked against the one waiting for a result (which is taken when none is named); or an "
        "earlier Instagram attempt whose container Meta cannot say anything of, which the post names")),
    note: str = typer.Option("", help=(
        "What was checked: kept in the command (the commands topic) and the handler's log, and with --not-published "
        "in the result's message too.")),
    command_id: str | None = CommandId,
    as_json: bool = AsJson,
    wait: float = Wait,
    api_url: str | None = ApiUrl,
) -> None:
    """Say whether an attempt the service cannot settle itself went out (its account cannot be asked, or the
    platform could not tell). Check the Page or the Instagram account first: this is recorded as its result.

    Also for an imported post's platform the old system may have published (the post asks for it): found there,
    --published-as records that post as the platform's; not there, republish it with `force --platform`."""
    if (published_as is None) == (not not_published):
        raise typer.BadParameter("give either --published-as POST_ID or --not-published")
    command_id = command_id or new_id()
    body: dict[str, Any] = {"platform": platform, "published": published_as is not None, "note": note}
    for name, value in (("platform_post_id", published_as), ("permalink", permalink), ("attempt_id", attempt_id),
                        ("command_id", command_id)):
        if value is not None:
            body[name] = value
    with api_client(api_url) as api:
        with console.status("Resolving ..."):
            answer = api.call("POST", f"/posts/{post_id}/resolve", json=body, again=_send_again_as(command_id, None))
        response, detail = _settled(api, answer, "Resolving", wait)
        if published_as is not None:
            _report(api, response, detail, as_json)
            return
        # Not published: the failure recorded is not the end of it, since the command that made the attempt carries on
        # (and publishes again, while its automatic attempts last). Said so, and not the exit status of a failed post.
        with suppress(typer.Exit):
            _report(api, response, detail, as_json)
        if attempt_id is not None and detail is not None and _earlier_attempt(detail, platform, attempt_id):
            # An earlier attempt's container: taken up after the post's command under way, if any, so nothing carries
            # on by itself.
            label = PLATFORM_LABELS[platform]
            recorded = not response.get("pending") or bool(detail.get("command", {}).get("settled"))
            (errors if as_json else console).print(
                f"Recorded as not published: its container is not asked about again, so a retry publishes {label} "
                f"(`smartretry retry {post_id}`)." if recorded else
                f"Sent: it is recorded once the post's command under way has ended (its automatic retries meet the "
                f"same container meanwhile); a retry then publishes {label} (`smartretry show {post_id}` says when).",
                highlight=False, soft_wrap=True)
            return
        (errors if as_json else console).print(
            f"Recorded as not published: the command that made the attempt carries on and publishes "
            f"{PLATFORM_LABELS[platform]} again while its automatic attempts last; `smartretry show {post_id}` follows "
            "it.", highlight=False, soft_wrap=True)


def _earlier_attempt(detail: dict[str, Any], platform: str, attempt_id: str) -> bool:
    """Whether `attempt_id` is an attempt of `platform` that a later one followed, as the post's attempts tell."""
    numbers = {entry.get("attempt_id"): entry.get("attempt_number") or 0
               for entry in detail.get("attempts", []) if entry.get("platform") == platform}
    return attempt_id in numbers and numbers[attempt_id] < max(numbers.values())


@ops.command()
def show(
    post_id: str = typer.Argument(..., callback=_checked_id, help="The post to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the insights document and details as JSON."),
    api_url: str | None = ApiUrl,
) -> None:
    """Show a post: status, each platform's result and link, what to do, and its retry history."""
    with api_client(api_url) as api:
        detail = api.call("GET", f"/posts/{post_id}").json()
        if as_json:
            _print_json(detail)
            return
        print_post(detail, api.page_url(post_id))
        # Commands and attempts, in the order they happened (a command before the attempts it made), with their times
        # said alike.
        lines: list[tuple[str, int, str]] = []
        for entry in detail.get("history", []):
            # Its note may end with an operator's reason, of any length and lines: one line, left to the terminal to
            # wrap, not cut at word breaks into lines of the history's own look.
            lines.append((entry["decided_at"], 0, f"{entry['command_type']}: {_one_line(str(entry['note']))}"))
        for attempt in detail.get("attempts", []):
            # Each attempt and what came of it: a failure's words stay here once a retry replaced it above.
            outcome = {"published": "✅ published", "failed": "❌ failed"}.get(attempt["outcome"],
                                                                             f"⏳ {attempt['outcome']}")
            said = f": {_one_line(attempt['error'])}" if attempt["outcome"] == "failed" and attempt.get("error") else ""
            if attempt.get("resolved_by") and "an operator found" not in said:
                said += " (as an operator said)"
            if attempt.get("unknown_because") and attempt["outcome"] != "not known yet":
                said += f" (its outcome was not known at first: {_one_line(attempt['unknown_because'])})"
            if attempt.get("container_cleared_by"):
                said += f" ({CONTAINER_CLEARED})"
            lines.append((attempt["started_at"], 1,
                          f"{PLATFORM_LABELS[attempt['platform']]} {attempt['kind']}: {outcome}{said}"))
        for at, _order, line in sorted(lines, key=lambda item: (item[0], item[1])):
            console.print(f"  {at[:19].replace('T', ' ')} UTC  {line}", highlight=False, soft_wrap=True)


# Characters of a caption `list` shows.
CAPTION_SHOWN = 60


def _one_line(text: str, limit: int | None = None) -> str:
    """A message's or caption's `text` for one terminal line: its line breaks read as another line of ours, its
    control characters shown, not obeyed (`shown_text`); cut to `limit` characters with an ellipsis when longer."""
    line = " ".join(text.split())
    if limit is not None and len(line) > limit:
        cut = limit - 1
        # Not inside a character as it is drawn: an emoji made of several (👩‍💻, 1️⃣) is kept whole or left out.
        while cut > 0 and (_continues(line[cut]) or line[cut - 1] in _JOINERS):
            cut -= 1
        line = line[:cut].rstrip() + "…"
    return shown_text(line)


def _continues(char: str) -> bool:
    """Whether `char` belongs to the character drawn before it: a combining mark, a variation selector, a joiner, an
    emoji's skin tone or a flag's tag."""
    return unicodedata.category(char) in ("Mn", "Me", "Mc") or char in _JOINERS or \
        "\ufe00" <= char <= "\ufe0f" or "\U0001f3fb" <= char <= "\U0001f3ff" or "\U000e0020" <= char <= "\U000e007f"


@ops.command("list")
def list_posts(
    status: str | None = typer.Option(None, help="Only posts with this status: publishing, posted or failed.",
                                      callback=_one_of("publishing", "posted", "failed")),
    limit: int = typer.Option(50, min=1, max=500, help="Show the most recently updated this many."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON answer."),
    api_url: str | None = ApiUrl,
) -> None:
    """List posts, most recently updated first: status, where they went, and why a failed one failed."""
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status
    with api_client(api_url) as api:
        listed = api.call("GET", "/posts", params=params).json()
    if as_json:
        _print_json(listed)
        return
    if not listed["posts"]:
        console.print(f"No {status} posts." if status else "No posts yet.", highlight=False)
        return
    # A line per post, its error on the next: the ids whole, whatever the terminal's width (they are what `show` and
    # `retry` take), and the error never squeezed out by a table's columns.
    width = max(len(post["id"]) for post in listed["posts"])
    for post in listed["posts"]:
        updated = (post["updated_at"] or "")[:19].replace("T", " ")
        # Whose post it is (one service publishes for several businesses), last: an account's name has no fixed width.
        whose = f"  {shown_text(post['account'])}" if post.get("account") else ""
        console.print(f"{post['id']:<{width}}  {post['status']:<10}  {post['publish_target']:<9}  {updated} UTC{whose}",
                      highlight=False, soft_wrap=True, markup=False)
        if post.get("caption"):
            # To tell posts apart: the caption's start, on one line.
            console.print(f"    \"{_one_line(post['caption'], CAPTION_SHOWN)}\"", highlight=False)
        if post["error_message"]:
            # On its line: a message's own line breaks would read as the next post's.
            console.print(f"    {_one_line(post['error_message'])}", highlight=False)
        for line in _automatic_retries(post):
            console.print(f"    {line}", highlight=False)
        for platform, action in post.get("needed_action", {}).items():
            # Publishing, but waiting for someone: it would look as if under way.
            console.print(f"    ⚠ Needed for {PLATFORM_LABELS[platform]}: {_as_commands(action)}", highlight=False,
                          soft_wrap=True)
    if listed.get("next_cursor"):
        more = "--limit shows up to 500, " if limit < 500 else ""
        console.print(f"More posts than these {limit}: {more}--status narrows the list, and the post list page "
                      f"({api.base_url}/ui/posts) goes on to older ones.", highlight=False)


# --------------------------------------------------------------------------------------------- accounts


@accounts.command("set-token")
def set_token(
    account: str = typer.Argument(..., callback=_checked_id, help="The account reference posts name."),
    page_id: str | None = typer.Option(None, help="The Facebook Page the account publishes to."),
    ig_user_id: str | None = typer.Option(None, help="The Instagram user the account publishes to."),
    token_stdin: bool = typer.Option(False, "--token-stdin", help="Read the token from standard input."),
    api_url: str | None = ApiUrl,
) -> None:
    """Re-authenticate an account: store a new user token (asked for, never taken as an argument)."""
    # Never an argument: it would stay in shell history and show in the process list.
    if not token_stdin and not sys.stdin.isatty():
        # Asked for without a terminal, it would be read from the input as it is typed, and shown.
        _error("there is no terminal to ask for the token on: pipe it in with --token-stdin")
        raise typer.Exit(2)
    token = sys.stdin.readline().strip() if token_stdin else typer.prompt("Token", hide_input=True)
    if not token:
        _error("no token was given: " + ("standard input held none (pipe the token in, on its first line)"
                                         if token_stdin else "type the token when asked"))
        raise typer.Exit(2)
    body = {"token": token, "page_id": page_id, "ig_user_id": ig_user_id}
    with api_client(api_url) as api:
        answer = api.call("PUT", f"/accounts/{account}/token", json={k: v for k, v in body.items() if v},
                          again="Storing the same token again changes nothing: run the same command line again.")
        saved = answer.json()
    console.print(f"Token of account {saved['account']} saved (page {saved.get('page_id') or '-'}, "
                  f"Instagram user {saved.get('ig_user_id') or '-'}).", highlight=False)


@accounts.command("list")
def list_accounts(api_url: str | None = ApiUrl) -> None:
    """The accounts that have a token (never the token itself)."""
    with api_client(api_url) as api:
        listed = api.call("GET", "/accounts").json()["accounts"]
    table = Table("account", "page", "Instagram user", "updated")
    for row in listed:
        table.add_row(row["account"], row.get("page_id") or "", row.get("ig_user_id") or "", row["updated_at"])
    console.print(table)


# --------------------------------------------------------------------------------------------- dead letters


def _bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap_servers:
        _error("set KAFKA_BOOTSTRAP_SERVERS to the service's broker (`smartretry run` prints it)")
        raise typer.Exit(2)
    return settings.kafka_bootstrap_servers


@contextmanager
def on_the_broker(settings: Settings) -> Iterator[str]:
    """The broker's address, for a command that reads or writes its topics. Its client's lines about a broker away
    (one per reconnect, hundreds of them) are kept off the terminal, and a broker that cannot be reached ends the
    command with one line saying so, not a traceback."""
    bootstrap = _bootstrap(settings)
    level = LIBRDKAFKA_LOG.level
    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)
    try:
        yield bootstrap
    except KafkaException as exc:
        _error(f"the broker at {scrub(bootstrap)} did not answer ({broker_said(exc)}): start the service (`smartretry "
               "run`), or point KAFKA_BOOTSTRAP_SERVERS at its broker")
        raise typer.Exit(1) from None
    finally:
        LIBRDKAFKA_LOG.setLevel(level)


def broker_said(exc: KafkaException) -> str:
    """A client error's own words ("Failed to get metadata: Local: Broker transport failure"), scrubbed."""
    error = exc.args[0] if exc.args else None
    return scrub(error.str() if isinstance(error, KafkaError) else str(exc))


LEADERLESS = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT, KafkaError._TRANSPORT}


def _watermarks(reader: Consumer, partition: TopicPartition) -> tuple[int, int]:
    # Right after a topic is created or a broker restarts, its partitions may still be electing leaders.
    deadline = time.monotonic() + 20
    while True:
        try:
            low, high = reader.get_watermark_offsets(partition, timeout=10)
            return int(low), int(high)
        except KafkaException as exc:
            if time.monotonic() > deadline or exc.args[0].code() not in LEADERLESS:
                raise
            time.sleep(0.1)


@dataclass
class DeadLetters:
    """What the dead-letter topic holds: the letters, in offset order, and the requeues of them."""

    # (offset, dead letter or None when unreadable, raw value)
    letters: list[tuple[int, DeadLetter | None, bytes]] = field(default_factory=list)
    # A dead letter's offset -> its latest requeue
    requeued: dict[int, DeadLetterRequeued] = field(default_factory=dict)

    def requeue_of(self, offset: int) -> DeadLetterRequeued | None:
        """The latest requeue of the message the dead letter at `offset` set aside, through any dead letter of it
        (a message set aside twice has two)."""
        found = [self.requeued[at] for at in self._same_message(offset) if at in self.requeued]
        return max(found, key=lambda r: r.requeued_at) if found else None

    def _same_message(self, offset: int) -> list[int]:
        letter = next((letter for at, letter, _raw in self.letters if at == offset), None)
        source = _source_of(letter)
        if source is None:
            return [offset]
        return [at for at, other, _raw in self.letters if _source_of(other) == source]


def read_dead_letters(bootstrap: str, topic: str) -> DeadLetters:
    """Every message on the dead-letter topic: the dead letters (None for one unreadable) and their requeues."""
    reader = Consumer(client_config(bootstrap, **{"group.id": f"smartretry-dlq-{uuid.uuid4().hex}",
                                                 "enable.auto.commit": False}))
    try:
        metadata = reader.list_topics(topic, timeout=10).topics.get(topic)
        found = DeadLetters()
        if metadata is None or metadata.error is not None:
            return found
        ends = {p: _watermarks(reader, TopicPartition(topic, p)) for p in metadata.partitions}
        wanted = {p for p, (low, high) in ends.items() if high > low}
        if not wanted:
            return found
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in wanted])
        finished: set[int] = set()
        while finished != wanted:
            message = reader.poll(10)
            if message is None:
                break
            if message.error():
                continue
            raw = message.value() or b""
            offset, partition = message.offset() or 0, message.partition() or 0
            if offset >= ends[partition][1] - 1:
                finished.add(partition)
            try:
                requeue = DeadLetterRequeued.model_validate_json(raw)
                found.requeued[requeue.dead_letter_offset] = requeue
                continue
            except ValidationError:
                pass
            try:
                letter: DeadLetter | None = DeadLetter.model_validate_json(raw)
            except ValidationError:
                letter = None
            found.letters.append((offset, letter, raw))
        found.letters.sort(key=lambda item: item[0])
        return found
    finally:
        reader.close()


def _dead_letter_at(settings: Settings, offset: int) -> tuple[DeadLetter, DeadLetterRequeued | None]:
    """The dead letter at `offset`, and its message's latest requeue if it was requeued."""
    with on_the_broker(settings) as bootstrap:
        found = read_dead_letters(bootstrap, settings.topics.dead_letters)
    for at, letter, _raw in found.letters:
        if at == offset:
            if letter is None:
                _error(f"the message at offset {offset} is not a dead letter")
                raise typer.Exit(1)
            return letter, found.requeue_of(offset)
    if offset in found.requeued:
        _error(f"offset {offset} of {settings.topics.dead_letters} is no dead letter but the record of a requeue")
    else:
        _error(f"no dead letter at offset {offset} of {settings.topics.dead_letters}")
    raise typer.Exit(1)


def _utc_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _requeued_text(requeue: DeadLetterRequeued) -> str:
    return (f"requeued {_utc_text(requeue.requeued_at)} UTC onto "
            f"{requeue.source_topic}[{requeue.partition}]@{requeue.offset}")


def _source_of(letter: DeadLetter | None) -> tuple[str, str, int | None, int] | None:
    """The message a dead letter set aside, as (consumer, topic, partition, offset); None when it says not."""
    if letter is None or letter.offset is None:
        return None
    return letter.consumer, letter.source_topic, letter.partition, letter.offset


# Columns below which `dlq list` prints each dead letter on two lines rather than as a table.
WIDE_TABLE = 140


@dlq.command("list")
def dlq_list(limit: int = typer.Option(50, min=1, help="Show the newest this many.")) -> None:
    """List the dead letters, newest last: where each came from and why it was set aside."""
    settings = load_settings()
    with console.status("Reading dead letters ..."), on_the_broker(settings) as bootstrap:
        found = read_dead_letters(bootstrap, settings.topics.dead_letters)
    letters = found.letters
    if not letters:
        console.print(f"No dead letters on {settings.topics.dead_letters}.")
        return
    # A message set aside again (a batch stored again after a failure, a consumer restarted before it
    # committed) is listed once, where it was first set aside, with how often.
    shown: list[tuple[int, DeadLetter | None]] = []
    times: dict[tuple[str, str, int | None, int], int] = {}
    for offset, letter, _raw in letters:
        source = _source_of(letter)
        if source is not None:
            if source in times:
                times[source] += 1
                continue
            times[source] = 1
        shown.append((offset, letter))
    table = Table("offset", "when", "from", "consumer", "key", "reason", "requeued")
    # A table of seven columns needs a wide terminal: on a narrow one each letter is two lines, its reason whole.
    narrow = console.width < WIDE_TABLE
    requeued = 0
    for offset, letter in shown[-limit:]:
        if letter is None:
            table.add_row(str(offset), "", "", "", "", "(not a dead letter)", "")
            if narrow:
                console.print(f"{offset}  (not a dead letter)", highlight=False, markup=False)
            continue
        requeue = found.requeue_of(offset)
        requeued += requeue is not None
        source_text = f"{letter.source_topic}[{letter.partition}]@{letter.offset}"
        source = _source_of(letter)
        repeated = times[source] if source is not None else 1
        reason = letter.reason if repeated == 1 else f"{letter.reason} (set aside {repeated} times)"
        when_requeued = "" if requeue is None else _utc_text(requeue.requeued_at)
        # What came with the message is shown as it is: no rich markup read into it, no control character let through.
        source_text, consumer, key, reason = (shown_text(text) for text in (
            source_text, letter.consumer, letter.key or "", reason))
        table.add_row(str(offset), _utc_text(letter.occurred_at), Text(source_text), Text(consumer), Text(key),
                      Text(reason), when_requeued)
        if narrow:
            console.print(f"{offset}  {_utc_text(letter.occurred_at)}  {source_text}  {consumer}  "
                          f"key {key or '-'}", highlight=False, markup=False, soft_wrap=True)
            console.print(f"    {reason}" + (f" (requeued {when_requeued})" if when_requeued else ""),
                          highlight=False, markup=False, soft_wrap=True)
    if not narrow:
        console.print(table)
    repeats = len(letters) - len(shown)
    console.print(f"{len(shown)} dead letter(s) on {settings.topics.dead_letters}"
                  + (f", and {repeats} more of messages listed above, set aside again." if repeats else ".")
                  + (f" {requeued} of those shown {'was' if requeued == 1 else 'were'} requeued." if requeued else "")
                  + " Times in UTC.")


@dlq.command("show")
def dlq_show(offset: int = typer.Argument(..., help="The dead letter's offset (from `dlq list`).")) -> None:
    """Show one dead letter with its original message."""
    letter, requeue = _dead_letter_at(load_settings(), offset)
    _print_json(letter.model_dump(mode="json", exclude={"value_b64"}))
    if requeue is not None:
        console.print(f"This message was {_requeued_text(requeue)}.", highlight=False, markup=False)
    original = letter.original_value()
    console.print("original message, with a token scrubbed out:" if letter.value_scrubbed else "original message:")
    console.print(shown_bytes(original) if original is not None else
                  "(not kept: the reason says why)" if letter.reason.startswith("the original ") else "(no value)",
                  highlight=False, markup=False)


def shown_bytes(raw: bytes) -> str:
    """A message's bytes as text for a terminal: what is not UTF-8, and control characters (which a terminal would
    act on: an escape sequence in a dead letter must not repaint the operator's screen), written as escapes."""
    return shown_text(raw.decode("utf-8", "backslashreplace"))


def shown_text(text: str) -> str:
    """Text from a message (its key, a reason quoting it) for a terminal: control characters and invisible ones written
    as escapes (a key `post-1` followed by a zero-width space is not `post-1`; a bidirectional override would make a
    line read otherwise than it is), but for those emoji and scripts are written with: the joiners (👩‍💻) and a flag's
    tags."""
    return "".join(c if c.isprintable() or c in "\n\t" or c in _JOINERS or "\U000e0020" <= c <= "\U000e007f"
                   else c.encode("unicode_escape").decode() for c in text)


# The zero-width joiner and non-joiner: parts of emoji sequences and of words in several scripts.
_JOINERS = frozenset("\u200c\u200d")


def _post_id_of(value: bytes) -> str | None:
    try:
        post_id = json_object(value, "message").get("post_id")
    except DecodeError:
        return None
    return post_id if isinstance(post_id, str) and ID_PATTERN.fullmatch(post_id) else None


def _still_unreadable(original: bytes, topic: str, settings: Settings) -> str | None:
    """Why the service's consumer of `topic` cannot read `original` (the decoder's words), or None when it can: then it
    was set aside for another reason (a post not there yet, a version that did not read it), which may have passed."""
    decode = decode_command if topic == settings.topics.commands else decode_event
    try:
        decode(original)
    except DecodeError as exc:
        return scrub(str(exc))
    return None


@dlq.command("requeue")
def dlq_requeue(
    offset: int = typer.Argument(..., help="The dead letter's offset (from `dlq list`)."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    again: bool = typer.Option(False, "--again", help="Requeue it even though it was requeued before."),
) -> None:
    """Put a dead letter's original message back on the topic it came from (after fixing its cause)."""
    settings = load_settings()
    letter, requeue = _dead_letter_at(settings, offset)
    original = letter.original_value()
    ours = {settings.topics.commands, settings.topics.post_events}
    if original is None:
        _error("this dead letter kept no message to requeue")
        raise typer.Exit(1)
    if letter.source_topic not in ours:
        _error(f"{letter.source_topic} is not one of this service's input topics")
        raise typer.Exit(1)
    if letter.value_scrubbed:
        _error("a token was scrubbed out of this message, so what it kept is not the "
               "original: requeued, it would send \"[redacted]\" on in the token's place. Send the message "
               "again from where it came from instead.")
        raise typer.Exit(1)
    if (unreadable := _still_unreadable(original, letter.source_topic, settings)) is not None:
        _error(f"this message would be set aside again as it is ({unreadable}): requeueing puts back the same bytes. "
               "Send it again, mended, from where it came from.")
        raise typer.Exit(1)
    if requeue is not None and not again:
        _error(f"this message was {_requeued_text(requeue)}. Once is enough (the same command or event sent twice "
               "counts once); if it was set aside again since, that is a new dead letter of its own in `dlq list`. "
               "To requeue it anyway, add --again.")
        raise typer.Exit(1)
    # Keyed by its post id where it names one, as every message on these topics is: one that came keyed otherwise
    # (an import set aside for the partition it came on) goes back on its post's partition.
    key = _post_id_of(original) or letter.key or ""
    if not yes and not sys.stdin.isatty():
        _error(f"This puts {len(original)} bytes back on {letter.source_topic}. Add --yes to requeue without being "
               "asked.")
        raise typer.Exit(2)
    if not yes:
        typer.confirm(f"Put {len(original)} bytes back on {letter.source_topic} (key {key!r})?", abort=True)
    sending = producer(_bootstrap(settings))
    try:
        partition, at = deliver(sending, letter.source_topic, key, original)
    except RuntimeError as exc:
        # Not taken in time: it may still have reached the broker (the handler does a command once, the projector an
        # event once, so sending it again does no harm).
        _error(f"the broker did not take the message in time ({exc}): it may not be requeued. Run the same command "
               "again once the broker answers (with --again, should `dlq list` show it requeued meanwhile)")
        raise typer.Exit(1) from None
    record = DeadLetterRequeued(dead_letter_offset=offset, source_topic=letter.source_topic, partition=partition,
                                offset=at, requeued_at=datetime.now(UTC))
    try:
        deliver(sending, settings.topics.dead_letters, letter.key or "", record.model_dump_json().encode())
    except Exception as exc:
        # The message is back on its topic: only the listing's mark is missing.
        _error(f"requeued, but the record of it was not written to {settings.topics.dead_letters} ({exc}): "
               "`dlq list` will not show it as requeued")
    console.print(f"Requeued dead letter {offset} onto {letter.source_topic}[{partition}]@{at}.", highlight=False)


# --------------------------------------------------------------------------------------------- the demo

DEMO_CAPTION = "Autumn sale starts today"
DEMO_BROKEN_URL = "https://cdn.example.com/autumn sale.jpg"
DEMO_FIXED_URL = "https://cdn.example.com/autumn-sale.jpg"


def _demo_settled(api: Api, answer: httpx.Response, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    response, detail = _settled(api, answer, what, DEFAULT_WAIT_SECONDS)
    if detail is None or response.get("pending"):
        _error(f"no results after {DEFAULT_WAIT_SECONDS:.0f}s: are the handler and processor running "
               "(`smartretry run`)?")
        raise typer.Exit(1)
    return response, detail


def _log_lines(detail: dict[str, Any], command_id: str) -> list[str]:
    """The product note's console lines for one command, from what the service recorded about it."""
    lines = []
    entry = next((h for h in detail["history"] if h["command_id"] == command_id), None)
    if entry is not None:
        lines.append(entry["note"])
        results = {r["platform"]: r for r in detail["insights"]["publish_results"]}
        for platform in entry["platforms"]:
            result = results.get(platform)
            label = PLATFORM_LABELS[platform]
            if result is not None and result["success"]:
                lines.append(f"✅ {label} published successfully")
            elif result is not None:
                lines.append(f"❌ {label} failed: {_one_line(str(result.get('error')))}")
    mark = "✅" if detail["status"] == "posted" else "❌" if detail["status"] == "failed" else "⏳"
    lines.append(f"{mark} Post status updated to: {detail['status']}")
    return lines


@ops.command()
def demo(
    api_url: str | None = ApiUrl,
    sandbox_url: str | None = typer.Option(
        None, envvar="SMARTRETRY_SANDBOX_URL",
        help="The sandbox Graph API's address, to make sure it refuses image URLs with spaces on Facebook."),
    account: str = typer.Option("demo", callback=_checked_id,
                                help="The account the demo stores the sandbox's token under and posts as."),
) -> None:
    """The product note's scenario on the sandbox, against a running service (`smartretry run`).

    Facebook fails on an image URL with a space while Instagram publishes; the URL is fixed and the
    retry publishes only Facebook.
    """
    from publishers.sandbox import DEMO_IG_USER_ID, DEMO_PAGE_ID, DEMO_USER_TOKEN, SandboxControl

    with api_client(api_url) as api:
        api.call("GET", "/healthz")
        given = sandbox_url or api.settings.sandbox_url
        # Else the sandbox `run` starts on this machine (at SMARTRETRY_SANDBOX_PORT) when no Meta address is set.
        sandbox_url = given or (f"http://127.0.0.1:{api.settings.sandbox_port}"
                                if not api.settings.graph_api_base_url else None)
        # A token of the demo's Page that the sandbox knows now: it forgets those given it since it started (a
        # renewal), and takes back its revocations of them, when it is reset.
        fresh: str | None = None
        if sandbox_url:
            try:
                with SandboxControl(sandbox_url) as control:
                    control.reject_spaces("facebook", True)
                    control.reject_spaces("instagram", False)
                    token = f"{DEMO_USER_TOKEN}-{secrets.token_hex(6)}"
                    control.register_account(DEMO_PAGE_ID, DEMO_IG_USER_ID, token)
                    fresh = token  # only once the sandbox has it
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                if given:
                    _error(f"the sandbox's address {_shown_address(sandbox_url)} (--sandbox-url, or "
                           f"SMARTRETRY_SANDBOX_URL) {_not_a_sandbox(exc, sandbox_url)}: give the address `smartretry "
                           "run` prints for it, or leave it out to use the sandbox the service runs")
                    raise typer.Exit(2) from None
                # Not there: the service's sandbox is elsewhere. Its first attempt says whether it refuses spaces.
        stored = next((row for row in api.call("GET", "/accounts").json()["accounts"] if row["account"] == account),
                      None)
        if stored is not None and (stored.get("page_id"), stored.get("ig_user_id")) != (DEMO_PAGE_ID, DEMO_IG_USER_ID):
            # Someone's own account under this name: the demo would replace its token with the sandbox's.
            _error(f"account {account!r} is connected to Page {stored.get('page_id') or '-'} "
                   f"and Instagram user {stored.get('ig_user_id') or '-'}, not to the sandbox's: the demo would "
                   "replace its token. Give the demo an account name of its own (--account).")
            raise typer.Exit(1)
        if stored is None or fresh is not None:
            api.call("PUT", f"/accounts/{account}/token",
                     json={"token": fresh or DEMO_USER_TOKEN, "page_id": DEMO_PAGE_ID, "ig_user_id": DEMO_IG_USER_ID})
            if stored is not None:
                console.print(f"Account {account!r} is connected to the sandbox's Page and Instagram account: given a "
                              "new token the sandbox knows now.", highlight=False, markup=False)
        else:
            # Connected to the sandbox already, which the demo cannot reach: its token is kept (one renewed after a
            # revocation stays renewed).
            console.print(f"Account {account!r} is connected to the sandbox's Page and Instagram account: its token "
                          "is kept.", highlight=False, markup=False)
        console.rule("First attempt: an image URL with a space in it")
        command_id = new_id()
        post_id = post_id_for(command_id)
        body = {"content": {"caption": DEMO_CAPTION, "image_url": DEMO_BROKEN_URL}, "publish_target": "both",
                "account": account, "post_id": post_id, "command_id": command_id}
        with console.status("Publishing to both Facebook and Instagram ..."):
            answer = api.call("POST", "/posts", json=body, again=f"See what came of it: smartretry show {post_id}")
        response, detail = _demo_settled(api, answer, "Publishing")
        for line in _log_lines(detail, response["command_id"]):
            console.print(line, highlight=False)
        if any(r["platform"] == "facebook" and r["success"] for r in detail["insights"].get("publish_results", [])):
            # The scenario needs Facebook to refuse the URL: the sandbox the service uses does not (its rejection of
            # spaces turned off), and the demo could not reach it to turn it on.
            _error("Facebook took the image URL with a space, so there is no failure to retry: the sandbox the "
                   "service publishes to does not refuse spaces. Give the demo the sandbox's address (--sandbox-url, "
                   "or SMARTRETRY_SANDBOX_URL) so that it turns that on, and run it again.")
            raise typer.Exit(1)
        console.print("Insights after the failed attempt:")
        _print_json({key: detail[key] for key in ("insights", "status", "error_message") if key in detail})
        console.print(f"Post detail page: {api.page_url(post_id)}", highlight=False)

        console.rule("Fix the image URL and retry")
        console.print(f"Image URL: {DEMO_BROKEN_URL!r} -> {DEMO_FIXED_URL!r}", highlight=False)
        with console.status("Retrying ..."):
            answer = api.call("POST", f"/posts/{post_id}/retry", json={
                "content": {"image_url": DEMO_FIXED_URL}, "command_id": new_id()},
                again=f"See what came of it: smartretry show {post_id}")
        response, detail = _demo_settled(api, answer, "Retrying")
        for line in _log_lines(detail, response["command_id"]):
            console.print(line, highlight=False)
        console.print("API response:")
        _print_json(response)
        console.print("Insights after the successful retry:" if detail["status"] == "posted" else
                      f"Insights after the retry (the post is {detail['status']}):")
        _print_json({key: detail[key] for key in ("insights", "status", "error_message", "post_url") if key in detail})
        if detail.get("retried"):
            console.print(detail["retried"], highlight=False)
        console.print(f"Post detail page: {api.page_url(post_id)}", highlight=False)
        if detail["status"] != "posted":
            raise typer.Exit(1)
