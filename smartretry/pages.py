"""The operators' pages: the product note's "Post Detail View" and a list of posts, rendered on the server.

The pages are protected by the same API key as the API. A browser presents it once (the login form,
or `?key=` in a link the service prints) and then carries a session cookie derived from the key:
HttpOnly and SameSite=Strict, so other sites can neither read it nor make the browser send it with a
form post. A session lasts 12 hours (the cookie says when it was issued, signed with the key), and
"Sign out" removes it from that browser (a copy of the cookie taken elsewhere lasts its 12 hours). The retry
form also carries a per-post token derived from the key, for browsers that do not honour SameSite. Changing
the API key ends every session at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import ValidationError

from projections.decide import CONTENT_AS_IT_IS, retry_targets, reuses_command_id
from projections.fold import FIX_THE_POST, awaiting_attempt, may_have_gone_out, unresolved
from projections.responses import (
    attempt_history,
    earlier_posts,
    kept_from_before,
    needed_actions,
    permalink_of,
    retried_summary,
)
from projections.resume import automatic_retry_times
from projections.state import PostState
from publishers.redact import scrub
from schemas.commands import ForceRepublishRequested, RetryRequested, content_problem
from schemas.common import CONTAINER_CLEARED, ID_PATTERN, PLATFORM_LABELS, PLATFORMS, Platform, target_of
from schemas.ids import new_id
from smartretry.api import (
    NOT_TAKEN,
    PUBLISH_ANYWAY,
    WAIT_FOR_RESULT,
    ContentCorrection,
    FrontDoor,
    RepublishBody,
    RetryBody,
    TokenBody,
    api_key_matches,
    clock_time,
    earlier_link,
    list_cursor,
    list_position,
    not_published_from,
    nothing_to_publish,
    outcome_unknown,
    platform_link,
    presented_key,
    queued_behind,
    retry_note,
    same_secret,
    service_key_named,
    waits_for_someone,
)
from smartretry.settings import Settings

HERE = Path(__file__).parent
SESSION_COOKIE = "smartretry_session"
# How long a sign-in lasts: a working day, after which the browser is asked for the key again.
SESSION_SECONDS = 12 * 3600
CLOCK_SKEW_SECONDS = 300
PLATFORM_ICONS: dict[str, str] = {"facebook": "📘", "instagram": "📷"}
STATUS_LABELS = {"failed": "❌ Failed", "posted": "✅ Posted", "publishing": "⏳ Publishing"}
# Seconds between reloads of a page whose post is still publishing; of one whose retry is queued behind an
# automatic retry that waits out a platform's limit.
REFRESH_SECONDS = 1
QUEUED_REFRESH_SECONDS = 30
# Seconds between two looks of a page whose post the service retries by itself, at the least.
AUTOMATIC_REFRESH_SECONDS = 5
# Seconds after which a retry sent from the page and still not taken up is said to be so, instead of "publishing".
UNHANDLED_AFTER_SECONDS = 60
# Posts per page of the post list.
LIST_PAGE = 100


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def _derived(settings: Settings, purpose: str) -> str:
    key = settings.api_key.get_secret_value().encode()
    return hmac.new(key, purpose.encode(), hashlib.sha256).hexdigest()


def _now() -> float:
    return time.time()


def session_value(settings: Settings, issued: int) -> str:
    """The session cookie of a sign-in at `issued` (Unix time): the time, and its signature by the key."""
    return f"{issued}.{_derived(settings, f'ui-session:{issued}')}"


def session_valid(settings: Settings, cookie: str | None) -> bool:
    """Whether `cookie` is a session this key issued less than `SESSION_SECONDS` ago."""
    issued, _, _signature = (cookie or "").partition(".")
    # Issued a little "later" than now is another replica's clock a little ahead, not a forgery (it is signed).
    # ASCII digits only: "²" is a digit to `isdigit`, not to `int`.
    if not (issued.isascii() and issued.isdigit()) or not -CLOCK_SKEW_SECONDS <= _now() - int(issued) < SESSION_SECONDS:
        return False
    return same_secret(cookie or "", session_value(settings, int(issued)))


def retry_token(settings: Settings, post_id: str) -> str:
    return _derived(settings, f"ui-retry:{post_id}")


def _safe_next(target: str | None) -> str:
    # Only our own pages: never an absolute or protocol-relative URL (an open redirect).
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/posts"


# "Facebook photo upload failed: 400 - Missing or invalid image file": what failed, its HTTP status, and Meta's words.
_FAILED = re.compile(r"^[^\n():]{1,100}? failed: (?:\d{3} - )?(?P<reason>.+)$", re.DOTALL)


def _reason(message: str) -> str:
    """The platform's own words of an error message, as the product note's page shows a failure ("Error: facebook:
    Missing or invalid image file"); the whole message where it has no such part."""
    found = _FAILED.match(message)
    return found.group("reason") if found else message


def platform_rows(state: PostState, max_attempts: int,
                  token_renewed_at: datetime | None = None) -> list[dict[str, Any]]:
    """One row per targeted platform: its latest result, link once published, and what to do when failed."""
    rows = []
    unknown = outcome_unknown(state)
    pending = set(unresolved(state)) | set(awaiting_attempt(state))
    actions = needed_actions(state, max_attempts, token_renewed_at)
    kept = kept_from_before(state)
    for platform in state.targeted:
        result = state.latest_result(platform)
        rows.append({
            "platform": platform, "label": PLATFORM_LABELS[platform], "icon": PLATFORM_ICONS[platform],
            "success": None if result is None else result.success, "link": platform_link(state, platform),
            # Its result came from an old-system document, not from asking the platform.
            "imported": result is not None and not state.attempts_of(platform),
            # An operator recorded it: an address missing was not given then.
            "recorded": state.recorded_on_word(platform),
            "error": _reason(result.error) if result is not None and not result.success and result.error else None,
            "error_full": result.error if result is not None and not result.success else None,
            "action": _page_action(actions[platform], republish_form(state)) if platform in actions else None,
            "unknown": unknown.get(platform),
            # Being published right now: an attempt without a result, or chosen by the latest decision.
            "pending": platform in pending,
            # Published before the post's content was corrected: what its post keeps.
            "kept": kept.get(platform),
        })
    return rows


def code_spans(text: str) -> Markup:
    """`text` escaped for the page, its `backquoted` parts (commands to type) shown as code."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unmatched backquote: the text as it is
        return Markup(escape(text))
    return Markup("").join(escape(part) if n % 2 == 0 else Markup("<code>%s</code>") % part
                           for n, part in enumerate(parts))


def ui_router(front: FrontDoor, settings: Settings) -> APIRouter:
    """The /ui pages, served by the API's app; they act through the same `FrontDoor` as the API."""
    router = APIRouter(prefix="/ui", include_in_schema=False)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["clock"] = lambda at: clock_time(at, front.clock())
    templates.env.filters["code_spans"] = code_spans
    # Said as the command line's `show` says it.
    templates.env.globals["CONTAINER_CLEARED"] = CONTAINER_CLEARED

    def signed_in(request: Request) -> bool:
        if session_valid(settings, request.cookies.get(SESSION_COOKIE)):
            return True
        return api_key_matches(settings, presented_key(request))

    def with_session(response: Response) -> Response:
        response.set_cookie(SESSION_COOKIE, session_value(settings, int(_now())), max_age=SESSION_SECONDS,
                            httponly=True, samesite="strict", path="/ui")
        return response

    def gate(request: Request) -> Response | None:
        """None when the request may see the page; else where to send the browser."""
        key = request.query_params.get("key")
        if key is not None:
            # Swap the key in the address for a cookie, so it stays out of history and Referer headers.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "key"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            if api_key_matches(settings, key):
                return with_session(RedirectResponse(target, status_code=303))
            return RedirectResponse(f"/ui/login?{urlencode({'next': target, 'wrong': '1'})}", status_code=303)
        if signed_in(request):
            return None
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?{urlencode({'next': target})}", status_code=303)

    @router.get("")
    async def home() -> Response:
        return RedirectResponse("/ui/posts", status_code=303)

    @router.get("/login")
    async def login_form(request: Request, next: str = "/ui/posts", wrong: str | None = None,
                         signed_out: str | None = None, unsent: str | None = None) -> Response:
        # What a form sent after the session ended did not do: store a token, send a republish, else send a retry.
        unsent_form = None if not unsent else unsent if unsent in ("token", "republish") else "retry"
        return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "wrong": bool(wrong),
                                                                  "signed_out": bool(signed_out),
                                                                  "unsent": unsent_form},
                                          status_code=401 if wrong else 200)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0]
        target = _safe_next((form.get("next") or [""])[0])
        if not api_key_matches(settings, key):
            return templates.TemplateResponse(request, "login.html", {"next": target, "wrong": True},
                                              status_code=401)
        return with_session(RedirectResponse(target, status_code=303))

    @router.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/ui/login?signed_out=1", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict")
        return response

    @router.get("/posts")
    async def post_list(request: Request, status: str | None = None, cursor: str | None = None) -> Response:
        if (redirect := gate(request)) is not None:
            return redirect
        chosen = status if status in STATUS_LABELS else None
        # A link edited by hand or cut short: the list shown says how it differs from what was asked.
        problem = None if not status or chosen is not None else \
            f"There is no status “{scrub(status)[:40]}”: every post is shown."
        try:
            after = list_position(cursor) if cursor else None
        except ValueError:
            after = None  # a mangled link: the list from its start
            problem = "That link's place in the list could not be read: the newest posts are shown."
        states = await asyncio.to_thread(front.stores.projection.list_posts, chosen, LIST_PAGE + 1, 0, after)
        older = None
        if len(states) > LIST_PAGE:
            states = states[:LIST_PAGE]
            next_cursor = list_cursor(states[-1])
            older = None if next_cursor is None else "/ui/posts?" + urlencode(
                {**({"status": chosen} if chosen else {}), "cursor": next_cursor})
        # Failed posts the service publishes again by itself: marked, they need nobody yet (unless it is late).
        times = {s.post_id: automatic_retry_times(s, settings.max_automatic_attempts, front.clock(), settings.backoff)
                 for s in states}
        return templates.TemplateResponse(request, "post_list.html", {
            "posts": states,
            "retrying": {post_id: " and ".join(PLATFORM_LABELS[p] for p in t.due) for post_id, t in times.items()
                         if t.due},
            "late": {post_id: " and ".join(PLATFORM_LABELS[p] for p in t.overdue) for post_id, t in times.items()
                     if t.overdue},
            # Publishing, but waiting for someone: what is needed, as the post's page says it.
            "waiting": {s.post_id: [f"Needed for {PLATFORM_LABELS[p]}: {_page_problem(action)}" for p, action in waits]
                        for s in states if (waits := waits_for_someone(s, settings.max_automatic_attempts).items())},
            "errors": {s.post_id: _error_lines(s) for s in states},
            "status": chosen, "labels": STATUS_LABELS, "older": older,
            "continued": after is not None, "filters": [(None, "All"), *STATUS_LABELS.items()], "problem": problem,
        })

    @router.get("/posts/{post_id}")
    async def post_page(request: Request, post_id: str, awaiting: str | None = None,
                        sent: str | None = None, token_stored: str | None = None,
                        republish: str | None = None) -> Response:
        if (redirect := gate(request)) is not None:
            return redirect
        # When the page sent the retry it awaits (epoch seconds); a link edited by hand is read as none, as is a time
        # to come (the page would wait for ever for a retry not taken up).
        sent_at = int(sent) if sent is not None and sent.isascii() and sent.isdigit() and len(sent) < 12 else None
        if sent_at is not None and sent_at > _now() + CLOCK_SKEW_SECONDS:
            sent_at = None
        # The platforms the awaited command republishes, when it is the page's republish: a posted post has nothing
        # a retry would publish, so the page cannot tell them from the post before the command is decided.
        chosen = _platforms_listed(republish) if republish is not None else None
        return await render_post(request, post_id, awaiting, None, sent=sent_at, token_stored=token_stored is not None,
                                 republishing=chosen)

    async def render_post(request: Request, post_id: str, awaiting: str | None, problem: str | None,
                          status_code: int = 200, entered_image_url: str | None = None,
                          entered_account: str | None = None, sent: int | None = None,
                          entered_caption: str | None = None,
                          token_stored: bool = False, republishing: tuple[Platform, ...] | None = None,
                          entered_republish: RepublishTyped | None = None,
                          sent_as: str | None = None) -> Response:
        # `sent_as`: the command id of a form the service could not take (Kafka away), for the form drawn again, so
        # that sending it again is the same command.
        state = await front.read(post_id) if ID_PATTERN.fullmatch(post_id) else None
        if state is None:
            return templates.TemplateResponse(request, "not_found.html", {"post_id": scrub(post_id)}, status_code=404)
        waiting = awaiting is not None and bool(ID_PATTERN.fullmatch(awaiting)) \
            and not await front.is_settled(post_id, awaiting)
        # A retry behind the post's automatic retry, which waits out a platform's limit (up to an hour): the post
        # stays as it is until then, and the page says so instead of "publishing" for that long.
        undecided = waiting and awaiting not in state.commands
        queued = queued_behind(state, settings.max_automatic_attempts, front.clock(),
                               settings.backoff, settings.attempt_lease_seconds) if undecided else None
        # What the awaited command publishes before it is decided: the republish's platforms, else a retry's.
        republishing = tuple(p for p in republishing or () if p in state.targeted) or None
        to_publish = republishing or retry_targets(state) if undecided else ()
        sent_what = "republish" if republishing else "retry"
        # A retry not taken up long after it was sent (or a link naming one this post never had): the page stops
        # showing "publishing", and says so, rather than refresh for ever.
        unhandled = None
        if undecided and queued is None and (sent is None or _now() - sent > UNHANDLED_AFTER_SECONDS):
            unhandled = (f"Your {sent_what} (command {awaiting}) has not been taken up"
                         + (f" {int(_now() - sent)} s after it was sent" if sent is not None else "")
                         + ": the service may be behind, or it refused it (the operators' `smartretry dlq list` "
                           "says why). This page shows the post as it is.")
            waiting = False
        rows = platform_rows(state, settings.max_automatic_attempts, await front.token_renewed_at(state))
        not_before = not_published_from(state, settings.attempt_lease_seconds, front.clock())
        for row in rows:
            row["not_published_from"] = not_before.get(row["platform"])
        if undecided and queued is None and not to_publish and not any(row["pending"] for row in rows):
            # Everything went out meanwhile: the retry will publish nothing, and the post is as it is.
            waiting = False
        times = automatic_retry_times(state, settings.max_automatic_attempts, front.clock(), settings.backoff)
        automatic = times.due
        decided = state.commands.get(awaiting) if awaiting else None
        if waiting and decided is not None and automatic and not any(row["pending"] for row in rows):
            # The retry's attempt failed, and the service tries again by itself (a rate limit's wait, up to an hour):
            # the post as it is, failed for now and when it is tried again, not "publishing" all that while.
            waiting = False
        status = "publishing" if waiting and queued is None else state.status
        targeted: tuple[Platform, ...] = state.targeted
        # What a retry sent from the form publishes (`retry_targets`): the caption field's word on where it goes.
        retrying = retry_targets(state)
        # The awaited retry decided to publish nothing (all had gone out by its turn): said so, with what it carried
        # left unused, rather than the post alone.
        if decided is not None and not decided.platforms and decided.note and unhandled is None:
            unhandled = (f"Your {'republish' if decided.forced else 'retry'} had nothing left to publish by its turn "
                         f"({decided.note}).")
        # Named as being published: those with an attempt under way; before the retry is decided, those it will
        # publish (the same rule as the handler's); once decided, those it chose; not every platform of the post.
        publishing = [row["label"] for row in rows if row["pending"]] or (
            [PLATFORM_LABELS[p] for p in to_publish]) or (
            [PLATFORM_LABELS[p] for p in decided.platforms] if decided is not None and decided.platforms else []) or \
            [row["label"] for row in rows]
        # Where the page shows a platform asking to re-authenticate (or to connect the account), the account's new
        # token can be stored from here, with the ids the account lacks for the post's platforms.
        reauth = None
        asking = [row for row in rows if _asks_for_token(row, status)]
        # The account's ids, read only for the form or the notice (not at each refresh of every post's page).
        ids = await front.account_ids(state.account) if state.account is not None and (asking or token_stored) \
            else None
        if state.account is not None and asking:
            reauth = {"account": state.account, "ids": missing_ids(state.targeted, ids),
                      # An attempt not known to have gone out is looked up again by the service once a token is stored.
                      "lookup": any(row["unknown"] for row in asking),
                      "recheck_s": int(settings.reauth_check_seconds)}
        # Read from the store, not the address: the page says only what is so.
        stored_at = datetime.fromisoformat(str(ids["updated_at"]).replace("Z", "+00:00")) \
            if token_stored and ids is not None and ids.get("updated_at") else None
        refresh = REFRESH_SECONDS if status == "publishing" else QUEUED_REFRESH_SECONDS if queued else None
        if refresh is None and automatic and status == "failed":
            # Failed for now, and published again by the service itself: the page follows it to its result. Looked at
            # again when the platform's wait ends, or every few seconds when it gave none (the handler's own backoff).
            dues = [(at - front.clock()).total_seconds() for at in automatic.values() if at is not None]
            refresh = int(min(QUEUED_REFRESH_SECONDS, max(AUTOMATIC_REFRESH_SECONDS, min(dues, default=0) + 1)))
        # Every platform being published waits for someone (to check the platform and resolve the attempt): nothing
        # comes of itself, so the page does not reload every second (its command could not be copied); now and then,
        # for a resolution made elsewhere.
        for_someone = status == "publishing" and not queued and any(row["pending"] for row in rows) and \
            all(row["action"] for row in rows if row["pending"])
        if for_someone:
            refresh = QUEUED_REFRESH_SECONDS
        # A page with the token form never reloads itself (it would empty the field being typed in): a link follows.
        follow = bool(refresh) and bool(problem or reauth)
        if reauth is not None:
            refresh = None
        # Where a platform refused the post itself ("fix the post": its caption, say), the caption can be corrected here
        # too, not only through the API or the command line; a post imported without content is given one here.
        caption = None
        if state.content is None:
            caption = entered_caption or ""
        elif "caption" in state.taken_out or any(row["action"] == FIX_THE_POST for row in rows):
            caption = entered_caption if entered_caption is not None else state.content.caption
        # The image URL to correct; empty where the post has none and needs one (Instagram's, or no content at all).
        image_url = entered_image_url or (state.content.image_url if state.content is not None else None)
        if image_url is None and (state.content is None or "instagram" in state.targeted):
            image_url = ""
        return templates.TemplateResponse(request, "post_detail.html", {
            "state": state,
            "status": status,
            "status_label": STATUS_LABELS[status],
            "rows": rows,
            "earlier": [{"platform": p, "label": PLATFORM_LABELS[p], "post_id": made,
                         "link": permalink_of(state, p, made) or earlier_link(p, made)}
                        for p, ids in earlier_posts(state).items() for made in ids],
            "publishing": publishing,
            # The post itself still publishing one platform after another failed (not the page's own retry, sent and
            # not decided yet: the platform it retries is shown as being published).
            "half_done": state.status == "publishing" and not undecided,
            "for_someone": for_someone,
            "unhandled": unhandled,
            "automatic": {PLATFORM_LABELS[p]: at for p, at in automatic.items()},
            "overdue": [PLATFORM_LABELS[p] for p in times.overdue],
            "automatic_by": {PLATFORM_LABELS[p]: at for p, at in times.by.items()},
            # Not on the answer to a refused form: it is at the form's address (a reload would send the form again,
            # a refresh would ask it with GET), and its message is there to be read. It links to the post instead.
            "refresh": None if problem else refresh,
            "follow": follow,
            # Not where a retry would publish nothing but a platform someone must look at first (the republish form).
            "can_retry": status == "failed" and queued is None and not only_unsure(state),
            # A posted post can be published again (the product note's "still allows republishing"), on the platforms
            # chosen: a new post beside the one there. Chosen at first: those whose post kept earlier content, else all.
            # So can an imported post's platform the old system may have published (chosen at first), once someone
            # looked and did not find it there (`republish_form`: not for every post).
            "republish": _republish_form(state, rows, entered_republish)
            if (status == "posted" or may_have_gone_out(state)) and queued is None and republish_form(state) else None,
            "queued": queued,
            "button_icons": " + ".join(PLATFORM_ICONS[p] for p in targeted),
            "note": retry_note(state, times, front.clock()) if status == "failed" else "",
            "retried": retried_summary(state) if status != "publishing" else None,
            "attempts": [{**entry, "label": PLATFORM_LABELS[str(entry["platform"])]}
                         for entry in attempt_history(state)],
            "retry_token": retry_token(settings, post_id),
            # The retry this drawing of the form sends: sent twice (a double click, the form sent again), it is one
            # command. Not restored by the browser into a later drawing (autocomplete off), which has its own, but for
            # the drawing that answers a form the service could not take: sent again, it is that same command.
            "command_id": sent_as or new_id(),
            # What the user typed, when the form comes back with a problem: to correct, not to type again.
            "image_url": image_url,
            "caption": caption,
            # Said before the retry is sent, not after: a corrected caption reaches only the platforms it publishes.
            "caption_kept": " and ".join(
                PLATFORM_LABELS[p] for p in targeted if p not in retrying
                and (result := state.latest_result(p)) is not None and result.success),
            "caption_goes_to": " and ".join(PLATFORM_LABELS[p] for p in retrying),
            # Imported without an account: the retry names the one to publish with.
            "needs_account": state.account is None,
            "entered_account": entered_account,
            "problem": problem,
            "reauth": reauth,
            "token_stored_at": stored_at,
        }, status_code=status_code)

    @router.post("/posts/{post_id}/retry")
    async def retry_from_page(request: Request, post_id: str) -> Response:
        if not signed_in(request):
            # Its session ended while the page was open: the sign-in page says the retry was not sent.
            return _unsent(post_id, "1")
        form = await _form_of(request)
        token = (form.get("token") or [""])[0]
        # The form's own command id; a form drawn before it carried one (a page open across an upgrade) gets a new one.
        command_id = (form.get("command_id") or [""])[0] or new_id()
        if not ID_PATTERN.fullmatch(post_id) or not same_secret(token, retry_token(settings, post_id)) \
                or not ID_PATTERN.fullmatch(command_id):
            return Response("This form has expired: reload the page and try again.", status_code=403)
        state = await front.read(post_id)
        image_url = (form.get("image_url") or [""])[0].strip()
        current = state.content.image_url if state is not None and state.content else None
        # As typed, but for the line breaks a browser sends as CRLF; None where the form offered no caption.
        caption = _line_breaks(form["caption"][0]) if form.get("caption") else None
        current_caption = _line_breaks(state.content.caption) if state is not None and state.content else None
        account = (form.get("account") or [""])[0].strip() or None
        if state is not None and _sent_before(state, command_id, image_url, account, caption):
            # This form was sent before and its retry taken up: answered as it was then, not sent again. (Sent again
            # before it was taken up, it goes to the handler once more, which does a command id once.)
            return RedirectResponse(f"/ui/posts/{post_id}?{urlencode({'awaiting': command_id, 'sent': int(_now())})}",
                                    status_code=303)
        if not image_url and current is not None and "image_url" in form:
            # Emptied: a retry keeps the post's image or takes a new one, it cannot take the image away. Said so,
            # rather than the retry going out with the image the field no longer showed.
            return await render_post(request, post_id, None,
                                     "The Image URL was emptied: a retry publishes the post's image or a new one, it "
                                     "cannot remove it. Give the image's address, or leave the field as it was.",
                                     status_code=422, entered_account=_typed_back(account),
                                     entered_caption=_typed_back(caption))
        try:
            changed: dict[str, str] = {"image_url": image_url} if image_url and image_url != current else {}
            if caption is not None and caption != current_caption and (caption or current_caption is not None):
                # Emptied, it is removed (a post of its image alone); refused where nothing else would be published.
                changed["caption"] = caption
            correction = ContentCorrection(**changed) if changed else None
            body = RetryBody(content=correction, account=account, command_id=command_id)
            accepted = await front.retry(post_id, body, forced=False, wait=False)
        except HTTPException as exc:
            can_republish = state is not None and republish_form(state)
            problem = _missed_retry(state, (form.get("seen") or [""])[0], _problem(exc.detail)) \
                or _page_problem(_problem(exc.detail), can_republish=can_republish)
            if state is not None and (record := state.commands.get(command_id)) is not None:
                # The form sent again, changed since (its command id is the page's own, not the user's to renew). One
                # that published nothing is refused as such ("Nothing to retry"), whatever was typed.
                problem = _page_problem(nothing_to_publish(record.note, record.skipped, post_id, forced=False,
                                                           state=state), can_republish=can_republish) \
                    if not record.platforms else \
                    "This form was already sent with other values and its retry taken up: nothing was sent now."
            # What the user typed comes back to be corrected, but a field refused for carrying a token: not shown again.
            carrying = _carrying_a_token(exc.detail)
            return await render_post(request, post_id, None, problem, status_code=exc.status_code,
                                     entered_image_url=_typed_back(image_url, "image_url" in carrying),
                                     entered_account=_typed_back(account, "account" in carrying),
                                     entered_caption=_typed_back(caption, "caption" in carrying),
                                     sent_as=command_id if exc.status_code == 503 else None)
        except ValidationError as exc:  # a malformed URL in the form
            return await render_post(request, post_id, None,
                                     _problem(exc.errors(include_url=False, include_input=False)), status_code=422,
                                     entered_image_url=_typed_back(image_url),
                                     entered_account=_typed_back(account),
                                     entered_caption=_typed_back(caption))
        return RedirectResponse(
            f"/ui/posts/{post_id}?{urlencode({'awaiting': accepted.command.command_id, 'sent': int(_now())})}",
            status_code=303)

    @router.post("/posts/{post_id}/republish")
    async def republish_from_page(request: Request, post_id: str) -> Response:
        """A forced republish of the platforms chosen, with its reason, as the API's POST /posts/{id}/republish."""
        if not signed_in(request):
            return _unsent(post_id, "republish")
        form = await _form_of(request)
        command_id = (form.get("command_id") or [""])[0] or new_id()
        if not ID_PATTERN.fullmatch(post_id) or not ID_PATTERN.fullmatch(command_id) or \
                not same_secret((form.get("token") or [""])[0], retry_token(settings, post_id)):
            return Response("This form has expired: reload the page and try again.", status_code=403)
        chosen = form.get("platforms") or []
        reason = (form.get("reason") or [""])[0]
        # As typed, but for the line breaks a browser sends as CRLF; None where the form sent no caption.
        caption = _line_breaks(form["caption"][0]) if form.get("caption") else None
        # How many attempts the post had when the page was drawn: one published again since (another tab, a
        # colleague) makes this republish publish nothing, rather than post it once more.
        seen = (form.get("seen") or [""])[0]
        seen_attempts = int(seen) if seen.isascii() and seen.isdigit() and len(seen) < 10 else None
        problem, status_code, carrying, sent_as = None, 422, set[str](), None
        if not chosen:
            problem = "Choose the platforms to publish again."
        else:
            try:
                state = await front.read(post_id)
                current = _line_breaks(state.content.caption) if state is not None and state.content else None
                # Only a caption changed is a correction (published from now on, on every platform).
                correction = ContentCorrection(caption=caption) \
                    if caption is not None and current is not None and caption != current else None
                body = RepublishBody(reason=reason, platforms=chosen, command_id=command_id, content=correction)
                accepted = await front.retry(post_id, body, forced=True, wait=False, seen_attempts=seen_attempts)
            except ValidationError as exc:
                problem = _problem(exc.errors(include_url=False, include_input=False))
            except HTTPException as exc:
                problem, status_code = _page_problem(_problem(exc.detail), asked="republish"), exc.status_code
                sent_as = command_id if exc.status_code == 503 else None
                if CONTENT_AS_IT_IS in problem:
                    problem += " (correct the Caption in the form below)"
                carrying = _carrying_a_token(exc.detail)
        if problem is not None:
            return await render_post(request, post_id, None, problem, status_code=status_code,
                                     entered_republish=RepublishTyped(
                                         chosen, _typed_back(reason, "reason" in carrying),
                                         _typed_back(caption, "caption" in carrying)), sent_as=sent_as)
        command = accepted.command
        platforms = ",".join(command.platforms or ()) if isinstance(command, ForceRepublishRequested) else ""
        return RedirectResponse(f"/ui/posts/{post_id}?" + urlencode({
            "awaiting": command.command_id, "sent": int(_now()), "republish": platforms}), status_code=303)

    @router.post("/posts/{post_id}/token")
    async def token_from_page(request: Request, post_id: str) -> Response:
        """Re-authenticates the post's account: its new token (and the ids it lacks) stored, as the API's PUT
        /accounts/{account}/token does. The token is never shown back, nor written anywhere but the store."""
        if not signed_in(request):
            return _unsent(post_id, "token")
        form = await _form_of(request, keep_blank_values=False)
        if not ID_PATTERN.fullmatch(post_id) or \
                not same_secret((form.get("csrf") or [""])[0], retry_token(settings, post_id)):
            return Response("This form has expired: reload the page and try again.", status_code=403)
        state = await front.read(post_id)
        if state is None:
            return templates.TemplateResponse(request, "not_found.html", {"post_id": scrub(post_id)}, status_code=404)
        if state.account is None:
            return await render_post(request, post_id, None, "This post names no account to store a token for: "
                                     "retry it naming one.", status_code=422)
        fields = {name: (form.get(name) or [""])[0].strip() or None for name in ("page_id", "ig_user_id")}
        token = (form.get("access_token") or [""])[0].strip()
        try:
            body = TokenBody(token=token, **fields)
            if (which := service_key_named(settings, token)) is not None:
                # A password manager's fill of the sign-in's key: never stored as the account's token.
                return await render_post(request, post_id, None, f"Access token: that is this service's {which} (your "
                                         "browser may have filled it in), not the account's access token from Meta.",
                                         status_code=422)
            lacking = [FIELD_LABELS[name] for name in missing_ids(state.targeted,
                                                                  await front.account_ids(state.account))
                       if not fields[name]]
            if lacking:
                return await render_post(request, post_id, None, f"{' and '.join(lacking)}: needed to connect account "
                                         f"{state.account} to the post's platforms, with its token.", status_code=422)
            await front.store_token(state.account, body, where="body")
        except ValidationError as exc:
            return await render_post(request, post_id, None,
                                     _problem(exc.errors(include_url=False, include_input=False)), status_code=422)
        except HTTPException as exc:
            return await render_post(request, post_id, None, _page_problem(_problem(exc.detail)),
                                     status_code=exc.status_code)
        return RedirectResponse(f"/ui/posts/{post_id}?token_stored=1", status_code=303)

    return router


def _unsent(post_id: str, unsent: str) -> Response:
    """The answer to a form of the post's page sent after its session ended: the sign-in page, which says what the
    form did not do (`unsent`: the retry, "republish", "token"), then leads back to the post."""
    return RedirectResponse(f"/ui/login?{urlencode({'next': f'/ui/posts/{post_id}', 'unsent': unsent})}",
                            status_code=303)


async def _form_of(request: Request, keep_blank_values: bool = True) -> dict[str, list[str]]:
    """A form's fields (blank ones kept by default: an emptied caption field is a caption removed, not one left as
    it was)."""
    return parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=keep_blank_values)


def _carrying_a_token(detail: Any) -> set[str]:
    """The fields an API refusal names for carrying a token: what the user typed in them is not shown back."""
    return {str(error.get("loc", [""])[-1]) for error in detail if isinstance(error, dict)
            and error.get("type") == "contains_token"} if isinstance(detail, list) else set()


def _platforms_listed(listed: str) -> tuple[Platform, ...]:
    """The platforms a page address names ("facebook,instagram"); one it does not know is left out."""
    return tuple(p for p in PLATFORMS if p in listed.split(","))


class RepublishTyped(NamedTuple):
    """What the user sent in the republish form, shown back when it comes back with a problem (None: not shown)."""

    platforms: Sequence[str]
    reason: str | None
    caption: str | None


def republish_form(state: PostState) -> bool:
    """Whether the post's page can have the republish form: not for a post imported without its account or content (the
    form has no field for them; the command line's `force --account --caption` has)."""
    return state.account is not None and state.content is not None


def _republish_form(state: PostState, rows: Sequence[dict[str, Any]], entered: RepublishTyped | None
                    ) -> dict[str, Any]:
    """The republish form's platforms (each checked or not), reason and caption: as the user sent them when the form
    comes back with a problem (the form open); else those whose post kept earlier content checked, or, where none did,
    every one, and the post's caption (the form closed: a post the retry left as the product note's is not asked to be
    published again). Where that caption does not fit the platforms checked, the form says so at once."""
    kept = [row["platform"] for row in rows if row.get("kept")] or list(may_have_gone_out(state))
    checked = list(entered.platforms) if entered is not None else kept or [row["platform"] for row in rows]
    caption = entered.caption if entered is not None and entered.caption is not None else \
        state.content.caption if state.content is not None else ""
    chosen = tuple(p for p in PLATFORMS if p in checked)
    unfit = content_problem(state.content, state.publish_target, publishing=target_of(chosen)) \
        if entered is None and state.content is not None and chosen else None
    return {"platforms": [{"platform": row["platform"], "label": row["label"], "checked": row["platform"] in checked}
                          for row in rows],
            "reason": entered.reason if entered is not None else None, "caption": caption, "unfit": unfit,
            "open": entered is not None or only_unsure(state), "unsure": bool(may_have_gone_out(state))}


def only_unsure(state: PostState) -> bool:
    """Whether all a retry of the post leaves to do is a platform the old system may have published: someone must look,
    then republish it (`fold.may_have_gone_out`)."""
    return bool(may_have_gone_out(state)) and not retry_targets(state)


def _asks_for_token(row: dict[str, Any], status: str) -> bool:
    """Whether the page shows the row asking for the account's new token (the template's rules for an action)."""
    if not (row["action"] or "").startswith(REAUTH_ACTIONS):
        return False
    return bool(row["unknown"]) or (status == "failed" and (row["success"] is False or not row["pending"]))


def _sent_before(state: PostState, command_id: str, image_url: str, account: str | None,
                 caption: str | None = None) -> bool:
    """Whether the post's command `command_id` is the retry the form sends now (the same form sent again): its image
    URL and caption (where the form has one) are the post's now (a correction the retry carried is the post's content
    since), and the retry recorded is of the same body, with that correction or none."""
    if command_id not in state.commands or state.content is None or image_url not in ("", state.content.image_url) \
            or (caption is not None and caption != _line_breaks(state.content.caption)):
        return False
    try:
        sent = [RetryRequested(command_id=command_id, post_id=state.post_id, content=content, account=account,
                               requested_at=datetime.now(UTC)) for content in (None, state.content)]
    except ValidationError:  # an account that is no id: never the retry recorded, and refused as the form's own
        return False
    return any(not reuses_command_id(state, command) for command in sent)


def _line_breaks(text: str) -> str:
    """`text` with its line breaks as the post keeps them: a browser sends a form's as CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def missing_ids(targeted: Sequence[Platform], account: Mapping[str, Any] | None) -> list[str]:
    """The ids (`page_id`, `ig_user_id`) a token form must take with the token: those of the post's platforms the
    account does not have (all of them for an account never connected)."""
    return [name for platform, name in (("facebook", "page_id"), ("instagram", "ig_user_id"))
            if platform in targeted and not (account or {}).get(name)]


def _missed_retry(state: PostState | None, seen: str, problem: str) -> str | None:
    """A refusal with nothing to retry, sent from a page opened before the post was published again from elsewhere
    (another tab, a colleague, the service's own retry): what the page missed, not a reason to republish. `seen` is
    how many commands and attempts the post had when the page was drawn. None otherwise."""
    if PUBLISH_ANYWAY not in problem or not seen.isascii() or not seen.isdigit() or len(seen) > 9 or \
            state is None or len(state.commands) + len(state.attempts) <= int(seen):
        return None
    return (f"{problem.split(PUBLISH_ANYWAY, 1)[0]}: the post changed after this page was opened (it is shown as it "
            "is now), and nothing is left to retry.")


# Where the document's `error_message` goes from one platform's part to the next ("facebook: ...; instagram: ...").
_NEXT_PLATFORM = re.compile(r"; (?=(?:facebook|instagram): )")


def _error_lines(state: PostState) -> list[str]:
    """The list's error cell: the document's `error_message` a line per platform (each cut on its own, so a long one
    never hides another's: an imported post's "may have gone out" among them)."""
    message = state.document.error_message
    return _NEXT_PLATFORM.split(message) if message else []


def _page_problem(problem: str, asked: str = "retry", can_republish: bool = False) -> str:
    """The API's refusal in the page's words: the API routes it names are of no use to someone on the page. `asked`:
    the form that was sent, a retry or a republish; `can_republish`: whether the page has its republish form."""
    problem = _one_republished(problem, can_republish)
    if problem.startswith(NOT_TAKEN):
        # Kafka away: the API's advice (the same request with its ids) is the same form sent again, as drawn below.
        return (f"The service could not take this {asked} just now (its message broker did not answer in time): send "
                f"the form again in a moment. Sent again, it is the same {asked}, which cannot publish twice.")
    if WAIT_FOR_RESULT in problem:
        return problem.split(WAIT_FOR_RESULT, 1)[0] + (
            ". Wait for its result, then retry if it failed." if asked == "retry" else
            ". Wait for its result, then publish again if you still want it posted again.")
    if PUBLISH_ANYWAY in problem:
        return problem.split(PUBLISH_ANYWAY, 1)[0] + (
            " (to publish it again anyway: Publish again, below)")
    if "taken out when the post was imported" in problem and re.search(r"content\.link\b", problem):
        # This page corrects the image URL and the caption, not the link.
        return problem + " (with `smartretry retry POST --link ...`)"
    # The right id of a platform the account's token cannot reach: the option that sets it.
    problem = re.sub(r"right Page id with PUT /accounts/([^\s),;]+)/token",
                     r"right Page id with `smartretry accounts set-token \1 --page-id ...`", problem)
    problem = re.sub(r"right Instagram account id with PUT /accounts/([^\s),;]+)/token",
                     r"right Instagram account id with `smartretry accounts set-token \1 --ig-user-id ...`", problem)
    # An id the account lacks: the option that sets it.
    problem = re.sub(r"set its page_id with PUT /accounts/([^\s),;]+)/token",
                     r"set it with `smartretry accounts set-token \1 --page-id ...`", problem)
    problem = re.sub(r"set its ig_user_id with PUT /accounts/([^\s),;]+)/token",
                     r"set it with `smartretry accounts set-token \1 --ig-user-id ...`", problem)
    # An account to connect: with the command line (or the API's route).
    problem = re.sub(r"with PUT /accounts/([^\s),;]+)/token", r"with `smartretry accounts set-token \1`", problem)
    # The API's names of the content's fields, as the retry form names them.
    return re.sub(r"\bcontent\.(caption|image_url)\b", lambda found: f"the {FIELD_LABELS[found.group(1)]}", problem)


def _page_action(action: str, can_republish: bool = False) -> str:
    """A needed action in the page's words; connecting the account can be done on the page (its token form), and a
    republish of one platform where the page has its form (`can_republish`)."""
    shown = _page_problem(action, can_republish=can_republish)
    if shown.startswith(CONNECT_ACTIONS):
        shown = shown.replace(" with `smartretry", " below, or with `smartretry", 1)
    return shown


def _one_republished(text: str, can_republish: bool) -> str:
    """`text` with the API's route for republishing one platform (`responses.republish_once_looked`) in the page's
    words: the republish form below, where the page has it (`can_republish`), and the command line's."""

    def republish(named: re.Match[str]) -> str:
        post_id, platform, account = named.groups()
        named_account = " --account NAME" if account else ""
        command = f"`smartretry force {post_id} --platform {platform}{named_account} --reason ...`"
        if not can_republish:
            return f"({command})"
        return f"(Publish again, below, with only {PLATFORM_LABELS[platform]} chosen, or {command})"

    found = _FOUND_THERE.sub(lambda named: f"(`smartretry resolve {named.group(1)} {named.group(2)} --published-as "
                                           f"{'MEDIA_ID' if named.group(2) == 'instagram' else 'POST_ID'}`)", text)
    return _ONE_REPUBLISHED.sub(republish, found)


# The API's route for republishing one platform, as a needed action names it (`responses.unsure_action`).
_ONE_REPUBLISHED = re.compile(
    r"\(POST /posts/([^\s),;]+)/republish naming (facebook|instagram) in platforms(, with the account)?\)")
# The API's route for saying a platform's post is there (`responses.republish_once_looked`).
_FOUND_THERE = re.compile(r"\(POST /posts/([^\s),;]+)/resolve naming (facebook|instagram), published, with its id\)")


# The forms' fields by the names the page gives them.
FIELD_LABELS = {"image_url": "Image URL", "caption": "Caption", "account": "Account", "token": "Access token",
                "reason": "Why", "platforms": "Platforms",
                "page_id": "Facebook Page id",
                "ig_user_id": "Instagram account id"}
# What a platform needs when a new token for the post's account is what it lacks (the form to store one shows then).
# Connecting the account (it has no credentials), or a platform to it (it lacks that platform's Page or account id).
CONNECT_ACTIONS = ("connect account ", "connect Facebook to account ", "connect Instagram to account ")
REAUTH_ACTIONS = ("re-authenticate ", *CONNECT_ACTIONS)


def _problem(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(_field_problem(item) if isinstance(item, dict) else str(item) for item in detail)
    return str(detail)


def _field_problem(error: dict[str, Any]) -> str:
    """One field's refusal, named as the form names the field ("Image URL: must be an http(s) URL"); pydantic's
    "Value error, " before a validator's own words says nothing to someone on the page."""
    message = str(error.get("msg", error)).removeprefix("Value error, ")
    loc = [str(part) for part in error.get("loc") or ()]
    if error.get("type") == "string_pattern_mismatch" and {"page_id", "ig_user_id"} & set(loc):
        # Not the pattern itself: what Meta's ids are.
        message = "an id is digits only, as Meta shows it (for example 747917475065823)"
    field = next((FIELD_LABELS[part] for part in reversed(loc) if part in FIELD_LABELS), None)
    return f"{field}: {message}" if field else message


def _typed_back(value: str | None, refused_for_a_token: bool = False) -> str | None:
    """What the user typed in a form field, to show back for correcting; None where it carries a token (the API
    refused it for one, or the scrubber finds one in it): a page never shows a token."""
    if value is None or refused_for_a_token or scrub(value) != value:
        return None
    return value
