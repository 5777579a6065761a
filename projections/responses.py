"""The seed's API response and retry history, read off a post's state (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

from projections.fold import (
    FIX_THE_POST,
    RIGHT_ID,
    awaiting_attempt,
    counted_platforms,
    may_have_gone_out,
    republish_route,
    unresolved,
    without_legacy_result,
)
from projections.resume import automatic_retries
from projections.state import PUBLISHED_FIELDS, CommandRecord, PostState
from schemas.api import PostSummary, PublishResponse, RetryInfo
from schemas.common import (
    ACCOUNT_ID_FIELDS,
    CHECKING,
    NO_CREDENTIALS,
    PLATFORM_LABELS,
    PLATFORMS,
    ErrorKind,
    Platform,
    format_timestamp,
    not_connected,
    target_of,
)


def publish_response(state: PostState, command_id: str | None = None) -> PublishResponse:
    """`success`, `post`, merged `results` per platform and, when the command was a retry, `retry_info`.

    `command_id` names the command the answer reports; None reports the post's latest decided command.
    `success` is true once the post is `posted`; `pending` is true while a result is still outstanding.

    `retry_info.previous_attempts` counts the publish attempts made before this command, one per platform
    call (an imported old-system result, or a failure its `error_message` names, counts as one). The seed
    counted entries of `publish_results` instead, which can only ever reach the number of platforms: after
    three failed Facebook retries it still says 2. In the seed's own example (one attempt each on Facebook
    and Instagram, then a retry) both counts are 2. `attempts_by_platform` and `retries_by_platform` give
    the totals so far, this command included.
    """
    record = state.commands.get(command_id) if command_id is not None else state.latest_command()
    status = state.status
    retry_info = None
    if record is not None and record.is_retry:
        retry_info = RetryInfo(
            is_retry=True,
            previous_attempts=previous_attempts(state, record.command_id),
            retried_platform=target_of(record.platforms),
            attempts_by_platform=attempts_by_platform(state),
            retries_by_platform=retries_by_platform(state),
        )
    return PublishResponse(
        success=status == "posted",
        post=PostSummary(id=state.post_id, status=status, error_message=state.document.error_message),
        results={r.platform: r for r in state.document.insights.publish_results},
        retry_info=retry_info,
        command_id=record.command_id if record is not None else command_id,
        pending=status == "publishing",
        # A command decided to publish nothing (a retry queued behind the post's automatic retry, which then
        # published what it would have): said, so that its answer is not taken for its own doing.
        note=record.note if record is not None and not record.platforms else None,
    )


def previous_attempts(state: PostState, command_id: str) -> int:
    """Attempts made before the command `command_id`: those of commands decided earlier, and any attempt
    that belongs to no decided command and was recorded before this command's first attempt."""
    order = list(state.commands)
    earlier = set(order[: order.index(command_id)]) if command_id in state.commands else set(order)
    later = set(order) - earlier
    count = sum(state.legacy_attempts.values())
    for attempt in state.attempts.values():  # insertion order is event order
        if attempt.command_id in later:
            if attempt.command_id == command_id:
                break
            continue
        count += 1
    return count


def attempts_by_platform(state: PostState) -> dict[Platform, int]:
    """Publish attempts per platform so far (an imported old-system result, or a failure its `error_message` names,
    counts as one)."""
    counts = {p: state.legacy_attempts.get(p, 0) for p in counted_platforms(state)}
    for attempt in state.attempts.values():
        counts[attempt.platform] = counts.get(attempt.platform, 0) + 1
    return counts


def retries_by_platform(state: PostState) -> dict[Platform, int]:
    """Attempts per platform that were retries (or forced republishes), not the first publish."""
    counts = dict.fromkeys(counted_platforms(state), 0)
    for attempt in state.attempts.values():
        if attempt.is_retry or attempt.forced:
            counts[attempt.platform] = counts.get(attempt.platform, 0) + 1
    return counts


def retry_history(state: PostState) -> list[CommandRecord]:
    """The retries (and forced republishes) decided for the post, oldest first, with the platforms each chose."""
    return [record for record in state.commands.values() if record.is_retry or record.forced]


def automatic_retries_by_platform(state: PostState) -> dict[Platform, int]:
    """Of `retries_by_platform`, those the service made by itself: every attempt of a command after its first on
    the platform (a hiccup or a rate limit met, then tried again), not asked for by anyone."""
    counts: dict[Platform, int] = {}
    seen: set[tuple[str, Platform]] = set()
    for attempt in sorted(state.attempts.values(), key=lambda a: a.attempt_number):
        mine = (attempt.command_id, attempt.platform)
        # (Counted among the retries too: an attempt taken up after a restart by an older version was recorded as
        # no retry, and is left out of both.)
        if attempt.command_id and mine in seen and (attempt.is_retry or attempt.forced):
            counts[attempt.platform] = counts.get(attempt.platform, 0) + 1
        seen.add(mine)
    return counts


def attempt_history(state: PostState) -> list[dict[str, object]]:
    """Every publish attempt of the post, oldest first, with what came of it: a failure's own words stay here after a
    later result replaced it in the insights document (which keeps one result per platform)."""
    seen: set[tuple[str, Platform]] = set()
    history: list[dict[str, object]] = []
    for attempt in sorted(state.attempts.values(), key=lambda a: (a.started_at, a.attempt_number, a.platform)):
        mine = (attempt.command_id, attempt.platform)
        if attempt.success:
            outcome = "published"
        elif attempt.success is False:
            outcome = "failed"
        else:
            outcome = "not known yet" if attempt.lookup_error is not None else "under way"
        history.append({
            "attempt_id": attempt.attempt_id, "platform": attempt.platform, "attempt_number": attempt.attempt_number,
            "command_id": attempt.command_id, "started_at": format_timestamp(attempt.started_at),
            "finished_at": format_timestamp(attempt.finished_at) if attempt.finished_at else None,
            "kind": "forced republish" if attempt.forced else
                    # An imported post's platform an operator found published by the old system (`decide.legacy_found`).
                    "old system's publish" if not attempt.command_id and attempt.resolved_by else
                    # A success that came in without its attempt on record (kept: it happened on the platform).
                    "attempt not on record" if not attempt.command_id else
                    "automatic retry" if mine in seen else
                    "retry" if attempt.is_retry else "first publish",
            "outcome": outcome, "error": attempt.error, "post_id": attempt.platform_post_id,
            # Why its outcome was not known at first (what its call met: "500 - ...", a token refused), kept after a
            # look-up or an operator settled it.
            "unknown_because": None if attempt.lookup_error is None else attempt.lookup_error.message
            if attempt.success is None else attempt.lookup_error.message.removesuffix(CHECKING),
            # Said by an operator (`smartretry resolve`), or found by asking the platform after the call got no answer.
            "resolved_by": attempt.resolved_by, "recovered": attempt.recovered,
            # An operator's word on its container (Instagram's), which Meta could not say anything of: not published.
            "container_cleared_by": attempt.container_cleared_by,
        })
        seen.add(mine)
    return history


def retried_summary(state: PostState) -> str | None:
    """The page's "🔄 Retried: Facebook (1 retry)", or None for a post never retried; the retries the service
    made by itself are told apart ("Instagram (4 automatic retries)"), since nobody asked for them."""
    automatic = automatic_retries_by_platform(state)
    forced_by_platform: dict[Platform, int] = {}
    for platform, _command in {(a.platform, a.command_id) for a in state.attempts.values() if a.forced}:
        forced_by_platform[platform] = forced_by_platform.get(platform, 0) + 1
    parts = []
    for platform, count in retries_by_platform(state).items():
        if not count:
            continue
        by_itself = automatic.get(platform, 0)
        label = PLATFORM_LABELS[platform]
        forced = forced_by_platform.get(platform, 0)
        if forced:
            # A forced republish made a second post on the platform: not a retry of a failure, and said so.
            republishes = f"{forced} forced republish{'es' if forced > 1 else ''}"
            others = count - forced - by_itself
            extra = [f"{others} {'retry' if others == 1 else 'retries'}"] if others else []
            extra += [f"{by_itself} automatic {'retry' if by_itself == 1 else 'retries'}"] if by_itself else []
            parts.append(f"{label} ({', '.join([republishes, *extra])})")
        elif by_itself == count:
            parts.append(f"{label} ({count} automatic {'retry' if count == 1 else 'retries'})")
        elif by_itself:
            parts.append(f"{label} ({count} retries, {by_itself} of them automatic)")
        else:
            parts.append(f"{label} ({count} {'retry' if count == 1 else 'retries'})")
    return f"🔄 Retried: {', '.join(parts)}" if parts else None


def earlier_posts(state: PostState) -> dict[Platform, list[str]]:
    """Per platform, the ids of posts earlier attempts made there that its latest result does not show: a forced
    republish's first post, or the one a later failed attempt left in place. They stay on the platform (nothing
    here deletes a post), and the user may want to find them."""
    earlier: dict[Platform, list[str]] = {}
    for platform in state.targeted:
        latest = state.latest_result(platform)
        shown = latest.post_id if latest is not None and latest.success else None
        for attempt in state.attempts_of(platform):
            made = attempt.platform_post_id
            if attempt.success and made and made != shown and made not in earlier.get(platform, ()):
                earlier.setdefault(platform, []).append(made)
    return earlier


def permalink_of(state: PostState, platform: Platform, post_id: str) -> str | None:
    """The address the platform gave with the post `post_id` an attempt made (Instagram's permalink), if it gave one."""
    return next((a.permalink for a in state.attempts_of(platform) if a.platform_post_id == post_id and a.permalink),
                None)


def token_stored_since_failure(state: PostState, token_renewed_at: datetime) -> list[Platform]:
    """The platforms whose failure asked to re-authenticate (or to connect the account) from an attempt begun before
    the post's account stored a token at `token_renewed_at`: what they need now is a retry."""
    stored: list[Platform] = []
    for platform, action in state.needed_action.items():
        result = state.latest_result(platform)
        if action.startswith("re-authenticate ") and result is not None and not result.success and \
                state.in_flight(platform) is None and \
                (tried_at := _tried_at(state, platform)) is not None and tried_at < token_renewed_at:
            stored.append(platform)
    return stored


def under_way(state: PostState) -> tuple[Platform, ...]:
    """Platforms being published now with nothing asked of anyone: an attempt without a result, or chosen by the
    latest decision and not attempted yet. What an earlier result asked for ("fix the image URL") is not the user's
    to do while it runs; its own result says what is needed next. Not one whose attempt's look-up waits for
    someone (a new token to ask the platform with, someone to check the platform and resolve the attempt): what the
    fold keeps for it then is the look-up's.
    """
    publishing = set(unresolved(state)) | set(awaiting_attempt(state))
    return tuple(p for p in PLATFORMS if p in publishing
                 and ((attempt := state.in_flight(p)) is None or attempt.lookup_error is None))


def needed_actions(state: PostState, max_attempts: int,
                   token_renewed_at: datetime | None = None) -> dict[Platform, str]:
    """What the user must do, per platform, as the API and the pages say it.

    After a failed result, re-authenticating (or granting a permission) is not all: the post goes out when it
    is retried then. While an attempt's look-up waits for the token, the service asks again by itself.
    The projection keeps the action as the fold derived it (what replay compares, and the metrics' label).
    `token_renewed_at`, when the post's account last stored a token: a failure that asked to re-authenticate (or to
    connect the account) from an attempt begun before then asks only for the retry now.
    A failure the service retries by itself asks for nothing, until its `max_attempts` are used up
    (`retries_used_up`). A platform being published again (`under_way`) asks for nothing until its result is in.
    """
    shown: dict[Platform, str] = {}
    for platform, action in state.needed_action.items():
        result = state.latest_result(platform)
        if token_renewed_at is not None and platform in token_stored_since_failure(state, token_renewed_at):
            # Stored since the failing attempt read the account: what is left is the retry (the "how" of
            # re-authenticating would only confuse). Whether the token is a good one only the retry tells: a failure
            # with it asks to re-authenticate again.
            shown[platform] = (f"retry {PLATFORM_LABELS[platform]} (a token was stored for the account at "
                               f"{token_renewed_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC, after the "
                               "failed attempt began)")
            continue
        if action.startswith("re-authenticate ") and state.account is not None and result is not None and \
                not result.success and (result.error or "").startswith(NO_CREDENTIALS):
            # The account was never connected (or was removed): there is nothing to re-authenticate.
            action = f"connect account {state.account} with PUT /accounts/{state.account}/token"
        if action.startswith("re-authenticate ") and state.account is not None and result is not None and \
                not result.success and (result.error or "").endswith(not_connected(platform)):
            # Stored without the platform's Page or Instagram account: its id is what is missing (sent with the token).
            action = (f"connect {PLATFORM_LABELS[platform]} to account {state.account}: set its "
                      f"{ACCOUNT_ID_FIELDS[platform]} with PUT /accounts/{state.account}/token")
        if action.startswith(RIGHT_ID) and state.account is not None:
            # As a publish without credentials is told (above): the account by name, and how to set it.
            what = action.removeprefix(RIGHT_ID).removesuffix(" id")
            action = f"set account {state.account}'s right {what} id with PUT /accounts/{state.account}/token"
        if action.startswith(("re-authenticate ", "grant the missing permission ", "connect ", "set account ",
                              "sign in to ")) and state.in_flight(platform) is None:
            action += ", then retry"
        shown[platform] = action
    shown = {**retries_used_up(state, max_attempts), **shown}
    for platform in state.targeted:
        if (held := held_by_container(state, platform)) is not None:
            shown[platform] = held
    unsure = may_have_gone_out(state)
    for platform in unsure:
        # Caught mid-publish by the import, or said to have gone out, it may be there all the same: a retry leaves it
        # alone, and someone who looked republishes it if it is not there. Over what its old failure asked for: that
        # is for the republish to meet.
        shown[platform] = unsure_action(state, platform)
    if state.account is not None:
        for platform in without_legacy_result(state):
            # Imported with no result for it: nothing publishes it until a retry does. Without content, the retry
            # brings it.
            shown.setdefault(platform, f"retry {PLATFORM_LABELS[platform]}{_bringing(state, platform)} to publish it")
        for platform in state.targeted:
            result = state.latest_result(platform)
            if platform not in shown and result is not None and not result.success and \
                    not state.attempts_of(platform):
                # An old system's failure whose words name nothing to fix: the service never retries it by itself, so
                # the retry is the user's to send.
                shown[platform] = f"retry {PLATFORM_LABELS[platform]}{_bringing(state, platform)}"
    if state.account is None and state.status == "failed":
        # Imported without an account: whatever else it needs, a retry publishes it only once it names one.
        for platform in state.targeted:
            result = state.latest_result(platform)
            if (result is None or not result.success) and platform not in unsure:
                needed = shown.get(platform)
                shown[platform] = NAME_THE_ACCOUNT if needed in (None, FIX_THE_POST) else \
                    f"{needed.removesuffix(', then retry')}, then {NAME_THE_ACCOUNT}"
                if state.content is None:
                    shown[platform] += " and the post's content (caption, image URL)"
    publishing = under_way(state)
    # In the platforms' own order (Facebook first), whichever failed first.
    return {platform: shown[platform] for platform in sorted(shown, key=PLATFORMS.index) if platform not in publishing}


def unsure_action(state: PostState, platform: Platform) -> str:
    """What an imported post's platform that may have gone out under the old system asks for (`may_have_gone_out`):
    someone to look, and republish it only if it is not there. The route is named for the CLI and the page to say in
    their words."""
    bringing = _bringing(state, platform)
    if state.account is None:
        # Imported without one: the republish names it (`smartretry force --account`).
        bringing += f"{' and' if bringing else ''} naming the account to publish it with"
    return republish_once_looked(state.post_id, platform, bringing, needs_account=state.account is None)


def republish_once_looked(post_id: str, platform: Platform, bringing: str = "", needs_account: bool = False) -> str:
    """`unsure_action`'s words, for a post whose state is not at hand (`bringing`: what the republish must bring;
    `needs_account`: the post has none, so the republish names one)."""
    label = PLATFORM_LABELS[platform]
    return (f"check {label} for the post: if it is there, record it (POST /posts/{post_id}/resolve naming {platform}, "
            f"published, with its id); if not, republish {label}{bringing} "
            f"({republish_route(post_id, platform, needs_account)}). A retry leaves it alone, as it may have gone out")


def held_by_container(state: PostState, platform: Platform) -> str | None:
    """What a platform held back by an earlier attempt's container that Meta cannot say anything of asks for (its latest
    failure says so): someone to check the account and resolve that attempt (`decide.container_resolution`), or it waits
    until the container is a day old."""
    earlier = state.held_back_by(platform)
    if earlier is None:
        return None
    label = PLATFORM_LABELS[platform]
    return (f"check {label} for the post of attempt {earlier.attempt_id} (Meta cannot say whether its container "
            f"{earlier.container_id} was published), then resolve that attempt: `smartretry resolve {state.post_id} "
            f"{platform} --attempt-id {earlier.attempt_id} --not-published` or `--published-as MEDIA_ID`")


def _bringing(state: PostState, platform: Platform) -> str:
    """What a retry of an imported post's `platform` must bring for it to be published, as the decision would refuse
    it without: the content it lacks, Instagram's image, a field a token was taken out of."""
    if state.content is None:
        return " with the post's content (caption, image URL)"
    if platform == "instagram" and state.content.image_url is None:
        return " with an image URL"
    if state.taken_out:
        return f" with its {' and '.join(state.taken_out)} corrected"
    return ""


def _tried_at(state: PostState, platform: Platform) -> datetime | None:
    """When the platform's latest attempt began, and read the account's token (an imported result: when the post
    was last updated)."""
    attempts = state.attempts_of(platform)
    return attempts[-1].started_at if attempts else state.updated_at


# What a post imported without an account needs before any retry can publish it.
NAME_THE_ACCOUNT = "retry naming the account to publish with"


def retries_used_up(state: PostState, max_attempts: int) -> dict[Platform, str]:
    """The platforms that failed for a reason the service retries by itself (a hiccup, a rate limit), and that it
    has stopped retrying (`max_attempts` made): a retry is up to the user now, and the post says so."""
    pending = automatic_retries(state, max_attempts)
    used_up: dict[Platform, str] = {}
    for platform in state.targeted:
        result = state.latest_result(platform)
        attempts = state.attempts_of(platform)
        if platform in pending or result is None or result.success or not attempts or attempts[-1].success is not False:
            continue
        label, kind = PLATFORM_LABELS[platform], attempts[-1].error_kind
        if kind is ErrorKind.RATE_LIMITED:
            used_up[platform] = f"retry {label} later (it limits how often it takes posts)"
        elif kind is ErrorKind.TRANSIENT:
            used_up[platform] = f"retry {label}"
    return used_up


# How much of a caption a post's page, detail and CLI quote when saying what a platform's post went out with.
KEPT_CAPTION_SHOWN = 200


def kept_from_before(state: PostState) -> dict[Platform, str]:
    """Per platform whose post went out with other content than the post's now (a retry of the other platform brought
    a corrected caption or image), what that post shows: the service publishes, it never edits a post."""
    kept: dict[Platform, str] = {}
    now = state.content
    for platform, went_out in state.published_with().items():
        parts = []
        if now is None or went_out.caption != now.caption:
            caption = went_out.caption if len(went_out.caption) <= KEPT_CAPTION_SHOWN else \
                went_out.caption[:KEPT_CAPTION_SHOWN] + "…"
            parts.append(f"the earlier caption “{caption}”" if caption.strip() else "no caption")
        for field, name in (("image_url", "image"), ("link", "link")):
            if field not in PUBLISHED_FIELDS[platform]:
                continue
            was = getattr(went_out, field)
            if now is None or was != getattr(now, field):
                parts.append(f"the {name} at {was}" if was else f"no {name}")
        label = PLATFORM_LABELS[platform]
        # A republish of that platform alone, never of the post: that would post the one already right again too.
        kept[platform] = (f"{label}'s post went out with {' and '.join(parts)}, not the post's content now (a "
                          f"published post is not edited here: if it should show what the post has now, change it "
                          f"on {label}, or republish {label} alone for a new post beside it)")
    return kept
