"""A Graph API on loopback for development and tests: Pages, Instagram containers and media, and faults on demand.

It speaks HTTP/1.1 itself (h11 over asyncio) rather than through an ASGI server, because one of its faults
is the crash between a call and its result: the post is created and then the socket is closed without an
answer, which an ASGI application cannot do. It starts in a few milliseconds in a background thread.

Endpoints (any `/vNN.N/` prefix): `GET /{page}?fields=access_token`, `POST /{page}/photos`, `POST /{page}/feed`,
`GET /{page}/published_posts`, `GET /{post}?fields=permalink_url`, `POST /{ig}/media`, `GET /{ig}/media`,
`GET /{container}?fields=status_code`, `POST /{ig}/media_publish`, `GET /{media}?fields=permalink`,
`GET /{ig}/content_publishing_limit`. The control API lives under `/_sandbox/` (see `SandboxControl`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit

import h11
import httpx

from publishers.redact import register_secret

log = logging.getLogger(__name__)

DEMO_ACCOUNT_ID = "demo"
DEMO_PAGE_ID = "747917475065823"
DEMO_IG_USER_ID = "17841400000000000"
# Not shaped like a Meta token on purpose: the scrubber must catch it because it was registered, not by shape.
DEMO_USER_TOKEN = "sandbox-demo-user-token-4f1c9a"
DEMO_PAGE_TOKEN = "sandbox-demo-page-token-7b2e0d"

# Fault targets: a platform and one of its endpoints ("*" for all of them).
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "facebook": ("page_token", "photos", "feed", "published_posts", "permalink"),
    "instagram": ("media", "media_list", "container_status", "media_publish", "permalink",
                  "content_publishing_limit", "account"),
}
FaultMode = Literal["error", "drop", "hang", "error_after"]
ContainerStatus = Literal["FINISHED", "ERROR", "EXPIRED"]


# The longest time a control request sets (a latency, a hang, a container's delay): a day.
MAX_CONTROL_SECONDS = 86_400.0


def _seconds(value: Any, what: str) -> float:
    """`value` as seconds from 0 to a day, or `ValueError` naming `what`."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(value, bool) or not 0 <= seconds <= MAX_CONTROL_SECONDS:
        raise ValueError(f"{what} must be from 0 to {MAX_CONTROL_SECONDS:.0f} seconds, not {value!r}")
    return seconds


def _whole(value: Any, low: int, high: int | None, rule: str) -> int:
    """`value` as a whole number from `low` to `high` (None: no bound), or `ValueError` saying `rule`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise ValueError(f"{rule}, not {value!r}")
    return value


def _endpoint_of(body: dict[str, Any]) -> tuple[str, str]:
    """The platform and endpoint a control request names, or `ValueError` saying which exist: a typo must never set
    something else (or nothing) than the tester meant."""
    platform, endpoint = body.get("platform"), body.get("endpoint") or "*"
    if platform not in ENDPOINTS:
        raise ValueError(f"platform must be one of {', '.join(ENDPOINTS)}, not {platform!r}")
    if endpoint != "*" and endpoint not in ENDPOINTS[platform]:
        raise ValueError(f"{platform}'s endpoints are {', '.join(ENDPOINTS[platform])} or *, not {endpoint!r}")
    return platform, endpoint


# Meta's media_publish reference: 50 posts per account in a moving 24 hours (read it live from
# /content_publishing_limit on the real API; it has changed before).
DEFAULT_PUBLISH_LIMIT = 50
# The most posts Meta returns in one page of /published_posts, whatever `limit` asks for.
FB_MAX_PAGE_SIZE = 100
_VERSION_PREFIX = re.compile(r"^/v\d+(?:\.\d+)?(?=/)")


@dataclass
class Fault:
    """What the next `times` calls of one platform endpoint do instead of (or after) their normal work.

    `error`: answer with a Meta error envelope and change nothing. `drop`: do the work (create the post),
    then close the connection without answering. `hang`: answer nothing for `hang_s`, change nothing.
    `error_after`: do the work, then answer with the error envelope (a 5xx that published all the same).
    """

    platform: str
    endpoint: str
    mode: FaultMode = "error"
    times: int = 1
    http_status: int = 400
    code: int = 1
    subcode: int | None = None
    message: str | None = None
    is_transient: bool = False
    error_type: str = "OAuthException"
    # Rate limits: minutes in X-Business-Use-Case-Usage, and X-App-Usage percentages.
    regain_access_minutes: int | None = None
    app_usage: dict[str, int] | None = None
    hang_s: float = 30.0
    # Calls of the endpoint served normally before the fault starts.
    skip: int = 0


@dataclass
class _Account:
    user_token: str
    page_id: str
    ig_user_id: str | None
    page_token: str


@dataclass
class _Container:
    id: str
    ig_user_id: str
    image_url: str
    caption: str
    ready_at: float
    final_status: ContainerStatus = "FINISHED"
    media_id: str | None = None


@dataclass
class _Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    hang_s: float | None = None


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    token: str | None


# 2025-01-01T00:00:00Z: where the sandbox's id serials count from.
SERIAL_EPOCH_NS = 1_735_689_600 * 10**9


class GraphSandbox:
    """The sandbox's state and behaviour, free of sockets: one call in, one reply out."""

    def __init__(self, container_delay_s: float = 0.0) -> None:
        self.default_container_delay_s = container_delay_s
        self.reset()

    def reset(self) -> None:
        self.accounts: dict[str, _Account] = {}
        self.revoked: set[str] = set()
        self.faults: list[Fault] = []
        self.latency: dict[tuple[str, str], float] = {}
        # The seed's incident: Facebook refuses an image URL with a space in it, Instagram takes it.
        self.reject_spaces: dict[str, bool] = {"facebook": True, "instagram": False}
        self.container_delay_s = self.default_container_delay_s
        self.next_container_statuses: list[ContainerStatus] = []
        self.publish_limit = DEFAULT_PUBLISH_LIMIT
        self.fb_posts: dict[str, dict[str, Any]] = {}
        self.containers: dict[str, _Container] = {}
        self.media: dict[str, dict[str, Any]] = {}
        self.calls = 0
        # Ids go on from the clock (microseconds since 2025), not from 1: as Meta's, they are never handed out twice,
        # also after the sandbox is started again or reset, so a post on record is never taken for a new one's.
        self._serial = (time.time_ns() - SERIAL_EPOCH_NS) // 1000
        self.register_account(DEMO_PAGE_ID, DEMO_IG_USER_ID, DEMO_USER_TOKEN, DEMO_PAGE_TOKEN)

    # --- control -------------------------------------------------------------------------------------------

    def register_account(
        self, page_id: str, ig_user_id: str | None, user_token: str, page_token: str | None = None
    ) -> str:
        page_token = page_token or f"sandbox-page-token-{secrets.token_hex(8)}"
        register_secret(user_token)
        register_secret(page_token)
        self.accounts[user_token] = _Account(user_token, page_id, ig_user_id, page_token)
        self.revoked.discard(user_token)
        self.revoked.discard(page_token)
        return page_token

    def revoke(self, token: str) -> None:
        """Revokes a token; revoking a user token also invalidates the Page tokens derived from it."""
        self.revoked.add(token)
        account = self.accounts.get(token)
        if account is not None:
            self.revoked.add(account.page_token)

    def add_fault(self, fault: Fault) -> None:
        known = ENDPOINTS.get(fault.platform, ())
        if not known or (fault.endpoint != "*" and fault.endpoint not in known):
            raise ValueError(f"unknown endpoint {fault.platform}/{fault.endpoint}")
        self.faults.append(fault)

    def counters(self) -> dict[str, dict[str, int]]:
        """Posts actually created, per Page and per Instagram user: the authority on duplicates."""
        result: dict[str, dict[str, int]] = {"facebook": {}, "instagram": {}}
        for account in self.accounts.values():
            result["facebook"].setdefault(account.page_id, 0)
            if account.ig_user_id:
                result["instagram"].setdefault(account.ig_user_id, 0)
        for post in self.fb_posts.values():
            result["facebook"][post["page_id"]] = result["facebook"].get(post["page_id"], 0) + 1
        for item in self.media.values():
            result["instagram"][item["ig_user_id"]] = result["instagram"].get(item["ig_user_id"], 0) + 1
        return result

    def posts(self) -> list[dict[str, Any]]:
        created = [{"platform": "facebook", **post} for post in self.fb_posts.values()]
        created += [{"platform": "instagram", **item} for item in self.media.values()]
        return sorted(created, key=lambda p: p["serial"])

    # --- Graph API -------------------------------------------------------------------------------------------

    def route(self, request: _Request) -> tuple[str, str, Any] | _Reply:
        """(platform, endpoint, handler) for a Graph API call, or the error reply for an unknown object."""
        parts = [p for p in request.path.split("/") if p]
        if len(parts) == 1:
            node = parts[0]
            if node in self.fb_posts:
                return "facebook", "permalink", self._get_fb_post
            if node in self.containers:
                return "instagram", "container_status", self._get_container
            if node in self.media:
                return "instagram", "permalink", self._get_media
            if any(a.page_id == node for a in self.accounts.values()):
                return "facebook", "page_token", self._get_page
            if any(a.ig_user_id == node for a in self.accounts.values()):
                return "instagram", "account", self._get_ig_user
        elif len(parts) == 2:
            node, edge = parts
            is_page = any(a.page_id == node for a in self.accounts.values())
            is_ig = any(a.ig_user_id == node for a in self.accounts.values())
            key = (request.method, edge)
            if is_page and key == ("POST", "photos"):
                return "facebook", "photos", self._post_photo
            if is_page and key == ("POST", "feed"):
                return "facebook", "feed", self._post_feed
            if is_page and key in (("GET", "published_posts"), ("GET", "feed")):
                return "facebook", "published_posts", self._list_fb_posts
            if is_ig and key == ("POST", "media"):
                return "instagram", "media", self._create_container
            if is_ig and key == ("GET", "media"):
                return "instagram", "media_list", self._list_media
            if is_ig and key == ("POST", "media_publish"):
                return "instagram", "media_publish", self._publish_container
            if is_ig and key == ("GET", "content_publishing_limit"):
                return "instagram", "content_publishing_limit", self._publishing_limit
        node = parts[0] if parts else ""
        return _error(400, 100, f"Unsupported {request.method.lower()} request. Object with ID '{node}' does not "
                      "exist, cannot be loaded due to missing permissions, or does not support this operation.",
                      subcode=33, error_type="GraphMethodException")

    def take_fault(self, platform: str, endpoint: str) -> Fault | None:
        for fault in self.faults:
            if fault.platform == platform and fault.endpoint in (endpoint, "*"):
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def latency_of(self, platform: str, endpoint: str) -> float:
        return self.latency.get((platform, endpoint), 0.0) + self.latency.get((platform, "*"), 0.0)

    def fault_reply(self, fault: Fault, node: str) -> _Reply:
        message = fault.message or _DEFAULT_MESSAGES.get(fault.code, "An unexpected error has occurred.")
        reply = _error(fault.http_status, fault.code, message, subcode=fault.subcode,
                       is_transient=fault.is_transient, error_type=fault.error_type)
        if fault.regain_access_minutes is not None:
            reply.headers["x-business-use-case-usage"] = json.dumps({node: [{
                "type": "pages" if fault.platform == "facebook" else "instagram",
                "call_count": 100, "total_cputime": 40, "total_time": 60,
                "estimated_time_to_regain_access": fault.regain_access_minutes,
            }]})
        if fault.app_usage is not None:
            reply.headers["x-app-usage"] = json.dumps(fault.app_usage)
        return reply

    def usage_headers(self, platform: str, node: str) -> dict[str, str]:
        self.calls += 1
        pct = min(99, self.calls // 50)
        return {
            "x-app-usage": json.dumps({"call_count": pct, "total_cputime": pct // 2, "total_time": pct // 2}),
            "x-business-use-case-usage": json.dumps({node: [{
                "type": "pages" if platform == "facebook" else "instagram",
                "call_count": pct, "total_cputime": pct // 2, "total_time": pct // 2,
                "estimated_time_to_regain_access": 0,
            }]}),
        }

    # Token checks, in Meta's words: a token Meta cannot parse is echoed back in the message (a real leak).
    def _check_token(self, token: str | None) -> _Reply | None:
        if not token:
            return _error(400, 104, "An access token is required to request this resource.")
        if token in self.revoked:
            return _error(400, 190, "Error validating access token: The session has been invalidated because the "
                          "user changed their password or Facebook has changed the session for security reasons.",
                          subcode=460)
        if token in self.accounts or any(a.page_token == token for a in self.accounts.values()):
            return None
        return _error(400, 190, f"Malformed access token {token}")

    def _page_account(self, request: _Request, page_id: str, *, page_token_required: bool) -> _Account | _Reply:
        refused = self._check_token(request.token)
        if refused is not None:
            return refused
        for account in self.accounts.values():
            if account.page_id != page_id:
                continue
            if request.token == account.page_token:
                return account
            if request.token == account.user_token:
                if not page_token_required:
                    return account
                return _error(403, 200, "(#200) If posting to a page, requires both pages_read_engagement and "
                              "pages_manage_posts as an admin with sufficient administrative permission")
        return _error(400, 100, f"Unsupported request. Object with ID '{page_id}' does not exist, cannot be loaded "
                      "due to missing permissions, or does not support this operation.", subcode=33)

    def _ig_account(self, request: _Request, ig_user_id: str) -> _Account | _Reply:
        refused = self._check_token(request.token)
        if refused is not None:
            return refused
        for account in self.accounts.values():
            if account.ig_user_id == ig_user_id and request.token in (account.user_token, account.page_token):
                return account
        return _error(400, 100, f"Unsupported request. Object with ID '{ig_user_id}' does not exist, cannot be "
                      "loaded due to missing permissions, or does not support this operation.", subcode=33)

    def _get_page(self, request: _Request, node: str) -> _Reply:
        account = self._page_account(request, node, page_token_required=False)
        if isinstance(account, _Reply):
            return account
        body: dict[str, Any] = {"id": node, "name": "Sandbox Page"}
        if "access_token" in _fields(request):
            body["access_token"] = account.page_token
        return _Reply(body=body)

    def _get_ig_user(self, request: _Request, node: str) -> _Reply:
        account = self._ig_account(request, node)
        return account if isinstance(account, _Reply) else _Reply(body={"id": node, "username": "sandbox"})

    def _image_refused(self, platform: str, url: str | None) -> bool:
        if not url or not url.startswith(("http://", "https://")):
            return True
        return self.reject_spaces[platform] and (" " in url or "%20" in url)

    def _post_photo(self, request: _Request, node: str) -> _Reply:
        account = self._page_account(request, node, page_token_required=True)
        if isinstance(account, _Reply):
            return account
        url = request.form.get("url")
        if self._image_refused("facebook", url):
            return _error(400, 324, "(#324) Missing or invalid image file", error_user_title="Missing or invalid image")
        photo_id = str(10_000_000_000_000 + self._next())
        post = self._add_fb_post(node, request.form.get("caption") or request.form.get("message") or "", url, None)
        post["photo_id"] = photo_id
        return _Reply(body={"id": photo_id, "post_id": post["id"]})

    def _post_feed(self, request: _Request, node: str) -> _Reply:
        account = self._page_account(request, node, page_token_required=True)
        if isinstance(account, _Reply):
            return account
        message, link = request.form.get("message", ""), request.form.get("link")
        if not message.strip() and not link:
            return _error(400, 100, "(#100) Either message or link must be supplied")
        recent = [p for p in self.fb_posts.values() if p["page_id"] == node and p["message"] == message and message]
        if recent and recent[-1]["link"] == link and time.time() - recent[-1]["created_ts"] < 5:
            return _error(400, 506, "(#506) Duplicate status message")
        return _Reply(body={"id": self._add_fb_post(node, message, None, link)["id"]})

    def _add_fb_post(self, page_id: str, message: str, image_url: str | None, link: str | None) -> dict[str, Any]:
        serial = self._next()
        post_id = f"{page_id}_{122104567890000 + serial}"
        now = datetime.now(UTC)
        post = {
            "id": post_id, "page_id": page_id, "message": message, "image_url": image_url, "link": link,
            "created_time": now.strftime("%Y-%m-%dT%H:%M:%S+0000"), "created_ts": now.timestamp(),
            "permalink_url": f"https://www.facebook.com/{post_id}", "serial": serial,
        }
        self.fb_posts[post_id] = post
        return post

    def _list_fb_posts(self, request: _Request, node: str) -> _Reply:
        """Newest first, `limit` at a time (at most 100, as Meta), with Meta's cursor paging.

        `paging.cursors.after` goes back as `after` for the next page; `paging.next` is there only when
        more posts remain, as on Meta, where its absence is the sign of the last page.
        """
        account = self._page_account(request, node, page_token_required=True)
        if isinstance(account, _Reply):
            return account
        since = _int(request.query.get("since"))
        until = _int(request.query.get("until"))
        limit = min(_int(request.query.get("limit")) or 25, FB_MAX_PAGE_SIZE)
        posts = [p for p in self.fb_posts.values() if p["page_id"] == node
                 and (since is None or p["created_ts"] >= since) and (until is None or p["created_ts"] <= until)]
        posts.sort(key=lambda p: p["serial"], reverse=True)
        return _page_of(request, posts, limit, _fields(request) or {"id", "message", "created_time"},
                        f"/{node}/published_posts")

    def _get_fb_post(self, request: _Request, node: str) -> _Reply:
        post = self.fb_posts[node]
        account = self._page_account(request, post["page_id"], page_token_required=False)
        if isinstance(account, _Reply):
            return account
        wanted = _fields(request) or {"id", "message", "created_time"}
        return _Reply(body={k: v for k, v in post.items() if k in wanted | {"id"} and v is not None})

    def _create_container(self, request: _Request, node: str) -> _Reply:
        account = self._ig_account(request, node)
        if isinstance(account, _Reply):
            return account
        url, caption = request.form.get("image_url"), request.form.get("caption", "")
        if not url:
            return _error(400, 100, "(#100) The parameter image_url is required")
        if self._image_refused("instagram", url):
            return _error(400, 9004, "Media download has failed. The media URI doesn't meet our requirements.",
                          subcode=2207052, error_user_title="Media download has failed")
        if len(caption) > 2200:
            return _error(400, 100, "The caption is too long. Captions are limited to 2200 characters.",
                          subcode=2207010)
        final: ContainerStatus = self.next_container_statuses.pop(0) if self.next_container_statuses else "FINISHED"
        container = _Container(
            id=str(17_889_000_000_000_000 + self._next()), ig_user_id=node, image_url=url, caption=caption,
            ready_at=time.monotonic() + self.container_delay_s, final_status=final,
        )
        self.containers[container.id] = container
        return _Reply(body={"id": container.id})

    def _container_status(self, container: _Container) -> str:
        if container.media_id is not None:
            return "PUBLISHED"
        if time.monotonic() < container.ready_at:
            return "IN_PROGRESS"
        return container.final_status

    def _get_container(self, request: _Request, node: str) -> _Reply:
        container = self.containers[node]
        account = self._ig_account(request, container.ig_user_id)
        if isinstance(account, _Reply):
            return account
        status = self._container_status(container)
        detail = {"ERROR": "Error: Media upload has failed with error code 2207052",
                  "EXPIRED": "Expired: the container was not published within 24 hours"}.get(status, status.title())
        return _Reply(body={"id": node, "status_code": status, "status": detail})

    def _publish_container(self, request: _Request, node: str) -> _Reply:
        account = self._ig_account(request, node)
        if isinstance(account, _Reply):
            return account
        container = self.containers.get(request.form.get("creation_id", ""))
        if container is None or container.ig_user_id != node:
            return _error(400, 100, "(#100) The parameter creation_id is required or invalid", subcode=2207006)
        status = self._container_status(container)
        if status == "IN_PROGRESS":
            return _error(400, 9007, "Media ID is not available", subcode=2207027,
                          error_user_msg="The media is not ready for publishing, please wait for a moment")
        if status == "ERROR":
            return _error(400, 9004, "The media could not be processed", subcode=2207032)
        if status == "EXPIRED":
            return _error(400, 9004, "The media container has expired", subcode=2207020)
        if status == "PUBLISHED":
            return _error(400, 100, "(#100) This media has already been published")
        if self._published_today(node) >= self.publish_limit:
            return _error(400, 9, "Application request limit reached", subcode=2207042,
                          error_user_msg="You reached the maximum number of posts allowed in 24 hours")
        serial = self._next()
        media_id = str(18_107_758_234_627_000 + serial)
        now = datetime.now(UTC)
        self.media[media_id] = {
            "id": media_id, "ig_user_id": node, "caption": container.caption, "image_url": container.image_url,
            "container_id": container.id, "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S+0000"),
            "created_ts": now.timestamp(), "permalink": f"https://www.instagram.com/p/SBX{serial:06d}/",
            "serial": serial,
        }
        container.media_id = media_id
        return _Reply(body={"id": media_id})

    def _published_today(self, ig_user_id: str) -> int:
        since = time.time() - 86400
        return sum(1 for m in self.media.values() if m["ig_user_id"] == ig_user_id and m["created_ts"] >= since)

    def _get_media(self, request: _Request, node: str) -> _Reply:
        item = self.media[node]
        account = self._ig_account(request, item["ig_user_id"])
        if isinstance(account, _Reply):
            return account
        wanted = _fields(request) or {"id"}
        return _Reply(body={k: v for k, v in item.items() if k in wanted | {"id"}})

    def _list_media(self, request: _Request, node: str) -> _Reply:
        account = self._ig_account(request, node)
        if isinstance(account, _Reply):
            return account
        # Newest first, with Meta's cursor paging as on Facebook's listing: `paging.next` only while more remain.
        limit = min(_int(request.query.get("limit")) or 25, FB_MAX_PAGE_SIZE)
        items = sorted((m for m in self.media.values() if m["ig_user_id"] == node), key=lambda m: -m["serial"])
        return _page_of(request, items, limit, _fields(request) or {"id"}, f"/{node}/media")

    def _publishing_limit(self, request: _Request, node: str) -> _Reply:
        account = self._ig_account(request, node)
        if isinstance(account, _Reply):
            return account
        return _Reply(body={"data": [{"quota_usage": self._published_today(node),
                                      "config": {"quota_total": self.publish_limit, "quota_duration": 86400}}]})

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    # --- control API -------------------------------------------------------------------------------------------

    def control(self, method: str, action: str, body: dict[str, Any]) -> _Reply:
        try:
            return self._control(method, action, body)
        except KeyError as exc:
            return _Reply(status=400, body={"error": f"bad control request: {exc} is required"})
        except (TypeError, ValueError) as exc:
            return _Reply(status=400, body={"error": f"bad control request: {exc}"})

    def _control(self, method: str, action: str, body: dict[str, Any]) -> _Reply:
        if (method, action) == ("GET", "health"):
            return _Reply(body={"ok": True})
        if (method, action) == ("GET", "counters"):
            return _Reply(body=self.counters())
        if (method, action) == ("GET", "posts"):
            return _Reply(body={"posts": [{k: v for k, v in p.items() if k != "created_ts"} for p in self.posts()]})
        if method != "POST":
            return _Reply(status=404, body={"error": f"no control endpoint {method} {action}"})
        if action == "reset":
            self.reset()
        elif action == "accounts":
            page_token = self.register_account(body["page_id"], body.get("ig_user_id"), body["user_token"],
                                               body.get("page_token"))
            return _Reply(body={"page_token": page_token})
        elif action == "revoke":
            self.revoke(body["token"])
        elif action == "faults":
            fields = {f.name for f in dataclasses.fields(Fault)}
            unknown = sorted(set(body) - fields)
            if unknown or not {"platform", "endpoint"} <= set(body):
                raise ValueError(f"a fault needs platform and endpoint, and takes {', '.join(sorted(fields))}"
                                 + (f" (not {', '.join(unknown)})" if unknown else ""))
            if not isinstance(body.get("times", 1), int) or body.get("times", 1) < 1:
                raise ValueError("a fault's times is how many calls it answers: at least 1")
            _endpoint_of(body)
            if "hang_s" in body:
                _seconds(body["hang_s"], "a fault's hang_s")
            _whole(body.get("skip", 0), 0, None, "a fault's skip is how many calls are served first: 0 or more")
            _whole(body.get("http_status", 400), 100, 599, "a fault's http_status is an HTTP status (100 to 599)")
            if body.get("mode", "error") not in get_args(FaultMode):
                raise ValueError(f"a fault's mode is one of {', '.join(get_args(FaultMode))}, not {body['mode']!r}")
            self.add_fault(Fault(**body))
        elif action == "latency":
            self.latency[_endpoint_of(body)] = _seconds(body["seconds"], "latency seconds")
        elif action == "reject-spaces":
            platform, _ = _endpoint_of({"platform": body.get("platform")})
            if not isinstance(enabled := body.get("enabled", True), bool):
                raise ValueError(f"enabled is true or false, not {enabled!r}")
            self.reject_spaces[platform] = enabled
        elif action == "containers":
            if body.get("next_status") and body["next_status"] not in get_args(ContainerStatus):
                raise ValueError(f"a container's next_status is one of {', '.join(get_args(ContainerStatus))}, not "
                                 f"{body['next_status']!r}")
            times = _whole(body.get("times", 1), 1, None,
                           "a container's times is how many containers end so: at least 1")
            if "delay_s" in body:
                self.container_delay_s = _seconds(body["delay_s"], "a container's delay_s")
            if body.get("next_status"):
                self.next_container_statuses += [body["next_status"]] * times
        elif action == "publish-limit":
            if int(body["limit"]) < 0:
                raise ValueError(f"the publish limit must be 0 or more, not {body['limit']!r}")
            self.publish_limit = int(body["limit"])
        else:
            return _Reply(status=404, body={"error": f"no control endpoint {method} {action}"})
        return _Reply(body={"ok": True})


_DEFAULT_MESSAGES = {
    1: "An unknown error occurred",
    2: "An unexpected error has occurred. Please retry your request later.",
    4: "(#4) Application request limit reached",
    10: "(#10) Application does not have permission for this action",
    17: "(#17) User request limit reached",
    32: "(#32) Page request limit reached",
    100: "(#100) Invalid parameter",
    190: "Error validating access token: Session has expired.",
    200: "(#200) Permissions error",
    324: "(#324) Missing or invalid image file",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    9004: "Media download has failed. The media URI doesn't meet our requirements.",
    80001: "(#80001) There have been too many calls to this Page account. Wait a bit and try again.",
}


def _error(
    http_status: int,
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    is_transient: bool = False,
    error_type: str = "OAuthException",
    error_user_title: str | None = None,
    error_user_msg: str | None = None,
) -> _Reply:
    envelope: dict[str, Any] = {"message": message, "type": error_type, "code": code,
                                "fbtrace_id": secrets.token_urlsafe(9), "is_transient": is_transient}
    if subcode is not None:
        envelope["error_subcode"] = subcode
    if error_user_title:
        envelope["error_user_title"] = error_user_title
    if error_user_msg:
        envelope["error_user_msg"] = error_user_msg
    headers = {"www-authenticate": f'OAuth "Facebook Platform" "invalid_token" "{message}"'} if code == 190 else {}
    return _Reply(status=http_status, body={"error": envelope}, headers=headers)


def _fields(request: _Request) -> set[str]:
    return {f.strip() for f in request.query.get("fields", "").split(",") if f.strip()}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _page_of(request: _Request, items: list[dict[str, Any]], limit: int, wanted: set[str], path: str) -> _Reply:
    """One page of `items` (newest first, each with its `serial`) with Meta's cursor paging: the `after` cursor of the
    request, `wanted` fields of each (and its id; none that is null), `paging.next` only while more remain (its
    absence is Meta's sign of the last page)."""
    if "after" in request.query:
        after = _decode_cursor(request.query["after"])
        if after is None:
            return _error(400, 100, "(#100) The after cursor is not valid")
        items = [item for item in items if item["serial"] < after]
    shown = items[:limit]
    data = [{k: v for k, v in item.items() if k in wanted | {"id"} and v is not None} for item in shown]
    if not shown:
        return _Reply(body={"data": []})
    after_cursor = _encode_cursor(shown[-1]["serial"])
    paging: dict[str, Any] = {"cursors": {"before": _encode_cursor(shown[0]["serial"]), "after": after_cursor}}
    if len(items) > limit:
        # Meta's next URL repeats the query with the access token in it; the sandbox leaves the token out (it came in
        # a header) so nothing it answers can leak one.
        query = {k: v for k, v in request.query.items() if k != "before"} | {"after": after_cursor}
        paging["next"] = f"{path}?{urlencode(query)}"
    return _Reply(body={"data": data, "paging": paging})


def _encode_cursor(serial: int) -> str:
    # Opaque to clients, as Meta's are: they pass cursors back and never read them.
    return base64.urlsafe_b64encode(f"post:{serial}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    kind, _, serial = text.partition(":")
    return _int(serial) if kind == "post" else None


def _bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() in ("bearer", "oauth") else None


class SandboxServer:
    """The sandbox on a loopback socket, served by its own event loop in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, container_delay_s: float = 0.0) -> None:
        self.state = GraphSandbox(container_delay_s)
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="graph-sandbox", daemon=True)
        self._started = threading.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._startup_error: BaseException | None = None
        self.base_url = ""

    def start(self) -> SandboxServer:
        self._thread.start()
        self._started.wait(timeout=10)
        if self._startup_error is not None:
            raise RuntimeError("the sandbox Graph API could not start") from self._startup_error
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._shutdown()))
        self._thread.join(timeout=10)

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, self._host, self._port, reuse_address=True))
        except BaseException as exc:
            self._startup_error = exc
            self._started.set()
            return
        host, port = self._server.sockets[0].getsockname()[:2]
        self.base_url = f"http://{host}:{port}"
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._loop.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                received = await _read_request(conn, reader)
                if received is None:
                    return
                reply = await self._handle(*received)
                if reply.drop:
                    # The crash between a call and its result: the work is done, the answer never comes.
                    writer.transport.abort()
                    return
                payload = json.dumps(reply.body).encode()
                headers = [("content-type", "application/json; charset=UTF-8"), ("content-length", str(len(payload))),
                           *reply.headers.items()]
                writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=payload)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._connections.discard(task)
            writer.close()

    async def _handle(self, head: h11.Request, body: bytes) -> _Reply:
        method = head.method.decode()
        target = urlsplit(head.target.decode())
        headers = {k.decode().lower(): v.decode() for k, v in head.headers}
        query = dict(parse_qsl(target.query, keep_blank_values=True))
        form: dict[str, str] = {}
        content_type = headers.get("content-type", "")
        if body and "json" in content_type:
            with contextlib.suppress(ValueError):
                loaded = json.loads(body)
                form = {k: str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
        elif body:
            form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        if target.path.startswith("/_sandbox/"):
            # JSON whatever the content type says (curl -d sends its own).
            try:
                loaded_body = json.loads(body) if body else {}
            except ValueError:
                loaded_body = None
            if not isinstance(loaded_body, dict):
                return _Reply(status=400, body={"error": "bad control request: the body must be a JSON object"})
            reply = self.state.control(method, target.path.removeprefix("/_sandbox/").strip("/"), loaded_body)
            log.debug("sandbox control %s %s -> %s", method, target.path, reply.status)
            return reply
        path = _VERSION_PREFIX.sub("", target.path)
        token = _bearer(headers) or form.pop("access_token", None) or query.pop("access_token", None)
        request = _Request(method, path, query, form, token)
        routed = self.state.route(request)
        if isinstance(routed, _Reply):
            return routed
        platform, endpoint, handler = routed
        node = path.strip("/").split("/")[0]
        delay = self.state.latency_of(platform, endpoint)
        if delay:
            await asyncio.sleep(delay)
        fault = self.state.take_fault(platform, endpoint)
        if fault is not None and fault.mode == "hang":
            await asyncio.sleep(fault.hang_s)
            return _Reply(drop=True)
        if fault is not None and fault.mode == "error":
            reply = self.state.fault_reply(fault, node)
        elif fault is not None and fault.mode == "error_after":
            handler(request, node)
            reply = self.state.fault_reply(fault, node)
        else:
            reply = handler(request, node)
            if fault is not None:
                reply.drop = True
        reply.headers = {**self.state.usage_headers(platform, node), **reply.headers}
        # Paths and statuses only: tokens travel in headers and bodies, which are never logged.
        log.debug("sandbox %s %s (%s/%s) -> %s%s", method, path, platform, endpoint, reply.status,
                  " then dropped the connection" if reply.drop else "")
        return reply


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request, bytes] | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return (head, bytes(body)) if head is not None else None
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def run_sandbox(host: str = "127.0.0.1", port: int = 0, *, container_delay_s: float = 0.0) -> SandboxServer:
    """Starts the sandbox in a background thread; use as a context manager or call `.stop()`.

    It listens before this returns (a few milliseconds): `.base_url` is ready to use.
    """
    return SandboxServer(host, port, container_delay_s=container_delay_s).start()


class SandboxControl:
    """Drives a running sandbox over its control API (`/_sandbox/...`), from tests or another process."""

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        # One connection for all control calls: a new client per call costs an SSL context each time.
        self._http = httpx.Client(base_url=f"{self.base_url}/_sandbox/", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._http.post(action, json=body or {})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def _get(self, action: str) -> dict[str, Any]:
        response = self._http.get(action)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def reset(self) -> None:
        """Back to the demo account only, no faults, no posts, default settings."""
        self._post("reset")

    def register_account(
        self, page_id: str, ig_user_id: str | None, user_token: str, page_token: str | None = None
    ) -> str:
        """Adds a Page (and its Instagram user) reachable with `user_token`; returns the Page token."""
        register_secret(user_token)
        page = str(self._post("accounts", {"page_id": page_id, "ig_user_id": ig_user_id, "user_token": user_token,
                                           "page_token": page_token})["page_token"])
        register_secret(page)
        return page

    def revoke(self, token: str) -> None:
        self._post("revoke", {"token": token})

    def fail_next(
        self,
        platform: str,
        endpoint: str,
        *,
        code: int,
        times: int = 1,
        http_status: int = 400,
        subcode: int | None = None,
        message: str | None = None,
        is_transient: bool = False,
        regain_access_minutes: int | None = None,
        app_usage: dict[str, int] | None = None,
        skip: int = 0,
    ) -> None:
        """The next `times` calls (after `skip` served normally) answer with this Meta error envelope and change
        nothing."""
        self._post("faults", asdict(Fault(
            platform=platform, endpoint=endpoint, mode="error", times=times, http_status=http_status, code=code,
            subcode=subcode, message=message, is_transient=is_transient,
            regain_access_minutes=regain_access_minutes, app_usage=app_usage, skip=skip,
        )))

    def fail_after(self, platform: str, endpoint: str, *, code: int, http_status: int = 500,
                   subcode: int | None = None, is_transient: bool = False, times: int = 1) -> None:
        """The next `times` calls do their work (publish the post) and then answer with this error envelope."""
        self._post("faults", asdict(Fault(platform=platform, endpoint=endpoint, mode="error_after", times=times,
                                          http_status=http_status, code=code, subcode=subcode,
                                          is_transient=is_transient)))

    def drop_after(self, platform: str, endpoint: str, *, times: int = 1) -> None:
        """The next `times` calls do their work (create the post) and then close the socket unanswered."""
        self._post("faults", asdict(Fault(platform=platform, endpoint=endpoint, mode="drop", times=times)))

    def hang_next(self, platform: str, endpoint: str, *, seconds: float = 30.0, times: int = 1) -> None:
        """The next `times` calls answer nothing for `seconds` (the client times out) and change nothing."""
        self._post("faults", asdict(Fault(platform=platform, endpoint=endpoint, mode="hang", times=times,
                                          hang_s=seconds)))

    def add_latency(self, platform: str, seconds: float, endpoint: str | None = None) -> None:
        self._post("latency", {"platform": platform, "endpoint": endpoint, "seconds": seconds})

    def reject_spaces(self, platform: str, enabled: bool = True) -> None:
        """Refuse image URLs with a space (Facebook's 324, Instagram's 2207052); Facebook does by default."""
        self._post("reject-spaces", {"platform": platform, "enabled": enabled})

    def set_container_delay(self, seconds: float) -> None:
        """How long new Instagram containers stay IN_PROGRESS before they are FINISHED."""
        self._post("containers", {"delay_s": seconds})

    def next_containers_end(self, status: ContainerStatus, *, times: int = 1) -> None:
        """The next `times` containers end in `status` (ERROR or EXPIRED) instead of FINISHED."""
        self._post("containers", {"next_status": status, "times": times})

    def set_publish_limit(self, limit: int) -> None:
        """Instagram posts allowed per user per 24 hours before media_publish answers 9 / 2207042."""
        self._post("publish-limit", {"limit": limit})

    def counters(self) -> dict[str, dict[str, int]]:
        """{"facebook": {page_id: posts created}, "instagram": {ig_user_id: media published}}."""
        return {platform: dict(counts) for platform, counts in self._get("counters").items()}

    def posts(self) -> list[dict[str, Any]]:
        """Every post and media created, oldest first."""
        return list(self._get("posts")["posts"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m publishers.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--container-delay", type=float, default=1.0,
                        help="seconds an Instagram container stays IN_PROGRESS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server = run_sandbox(args.host, args.port, container_delay_s=args.container_delay)
    print(f"Sandbox Graph API listening at {server.base_url}", flush=True)
    print(f"Demo account: page {DEMO_PAGE_ID}, Instagram user {DEMO_IG_USER_ID} "
          "(user token: publishers.sandbox.DEMO_USER_TOKEN)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()


__all__ = [
    "DEMO_ACCOUNT_ID", "DEMO_IG_USER_ID", "DEMO_PAGE_ID", "DEMO_USER_TOKEN", "ENDPOINTS", "Fault",
    "GraphSandbox", "SandboxControl", "SandboxServer", "run_sandbox",
]
