"""Properties of the fold over generated post histories: determinism, duplicates, interleaving, the status rule."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.fold import apply, apply_all, fold, needed_action
from projections.state import PostState
from schemas.common import ErrorKind, Platform, PublishTarget, platforms_of
from schemas.events import CommandType, Event
from tests.unit.test_fold import History

OUTCOMES = st.sampled_from(["success", "failure", "in_flight"])
KINDS = st.sampled_from(list(ErrorKind))
# Per test, not a global profile: other test modules keep their own settings.
fold_settings = settings(max_examples=150, deadline=None)


@dataclass
class Story:
    """A generated post history and what the test expects of it, computed without the fold."""

    history: History
    targeted: tuple[Platform, ...]
    latest_success: dict[Platform, bool] = field(default_factory=dict)
    in_flight: set[Platform] = field(default_factory=set)
    awaiting: set[Platform] = field(default_factory=set)
    # Platforms whose latest attempt has no result and could not be checked, with the lookup's error kind.
    unchecked: dict[Platform, ErrorKind] = field(default_factory=dict)

    @property
    def events(self) -> list[Event]:
        return self.history.events


@st.composite
def stories(draw: st.DrawFn, post_id: str = "post-1") -> Story:
    target: PublishTarget = draw(st.sampled_from(["facebook", "instagram", "both"]))
    targeted = platforms_of(target)
    history = History(post_id=post_id)
    story = Story(history, targeted)
    history.submit(target)
    rounds = draw(st.integers(min_value=1, max_value=4))
    for number in range(rounds):
        chosen = tuple(p for p in targeted if draw(st.booleans())) if number else targeted
        command_id = f"cmd-{number}"
        kind: CommandType = "PublishRequested"
        if number:
            kind = draw(st.sampled_from(["RetryRequested", "ForceRepublishRequested"]))
        history.decide(command_id, chosen, kind)
        story.awaiting = set(chosen)
        if number == rounds - 1 and draw(st.booleans()):
            break  # the handler died between deciding and attempting
        attempts: dict[Platform, str] = {}
        for platform in chosen:
            attempts[platform] = history.attempt(platform, command_id, retry=number > 0,
                                                 forced=kind == "ForceRepublishRequested")
            story.awaiting.discard(platform)
            story.in_flight.add(platform)
            story.unchecked.pop(platform, None)
            if platform == "instagram" and draw(st.booleans()):
                history.container(platform, attempts[platform], f"container-{number}")
        # Results come back in any order between platforms.
        for platform in draw(st.permutations(list(chosen))):
            history.at += timedelta(milliseconds=draw(st.integers(min_value=0, max_value=5000)))
            outcome = draw(OUTCOMES)
            if draw(st.booleans()):
                # The handler died and its successor could not ask the platform (before the result, if any).
                kind = draw(KINDS)
                history.unknown(platform, attempts[platform], kind)
                story.unchecked[platform] = kind
            if outcome == "in_flight":
                continue
            story.unchecked.pop(platform, None)
            story.in_flight.discard(platform)
            story.latest_success[platform] = outcome == "success"
            if outcome == "success":
                history.success(platform, attempts[platform], f"{platform}-{number}",
                                f"https://www.instagram.com/p/{number}/" if platform == "instagram" else None)
            else:
                history.failure(platform, attempts[platform], f"refused in round {number}", draw(KINDS))
    return story


@fold_settings
@given(stories())
def test_the_status_rule(story: Story) -> None:
    state = fold(story.events)["post-1"]
    busy = bool(story.in_flight or story.awaiting)
    all_succeeded = all(story.latest_success.get(p) is True for p in story.targeted)
    any_failed = any(ok is False for ok in story.latest_success.values())
    assert (state.status == "posted") == (all_succeeded and not busy)
    assert (state.status == "failed") == (any_failed and not busy)
    assert (state.document.error_message is None) == (not any_failed)
    for result in state.document.insights.publish_results:
        assert result.success == story.latest_success[result.platform]
    assert [r.platform for r in state.document.insights.publish_results] == [
        p for p in ("facebook", "instagram") if p in story.latest_success
    ]
    for platform, kind in story.unchecked.items():
        # Only the user can unblock a lookup refused for the token, and only someone who checks the platform one
        # it refuses as a bad request; the service asks again after anything else.
        expected = needed_action(platform, kind) if kind in (ErrorKind.AUTH, ErrorKind.PERMISSION) else None
        if kind in (ErrorKind.INVALID_REQUEST, ErrorKind.INVALID_MEDIA):
            expected = f"check {platform.capitalize()} for the post, then resolve the attempt"
        assert state.needed_action.get(platform) == expected
        assert state.status == "publishing"


@fold_settings
@given(stories())
def test_the_fold_is_deterministic_and_survives_storing_the_state_between_events(story: Story) -> None:
    once = fold(story.events)
    assert fold(story.events) == once
    # The store keeps the state as JSON between events: reading it back must not change what comes next.
    state: PostState | None = None
    for event in story.events:
        state = apply(state, event)
        state = PostState.model_validate_json(state.model_dump_json())
    assert state == once["post-1"]
    assert state.model_dump_json() == once["post-1"].model_dump_json()


@fold_settings
@given(stories())
def test_the_insights_topics_json_is_the_document(story: Story) -> None:
    state = fold(story.events)["post-1"]
    assert json.loads(state.document.to_json(post_id="post-1")) == {"post_id": "post-1",
                                                                       **state.document.to_document()}
    assert json.loads(state.document.to_json()) == state.document.to_document()


@fold_settings
@given(stories(), st.data())
def test_any_event_delivered_again_anywhere_after_it_changes_nothing(story: Story, data: st.DataObject) -> None:
    events = list(story.events)
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        original = data.draw(st.integers(min_value=0, max_value=len(story.events) - 1))
        position = events.index(story.events[original])
        again = data.draw(st.integers(min_value=position + 1, max_value=len(events)))
        events.insert(again, story.events[original])
    assert fold(events) == fold(story.events)


@fold_settings
@given(st.lists(st.integers(min_value=1, max_value=9), min_size=2, max_size=3, unique=True), st.data())
def test_interleaving_posts_gives_each_post_the_state_of_its_own_events(numbers: list[int],
                                                                         data: st.DataObject) -> None:
    per_post = {f"post-{n}": data.draw(stories(post_id=f"post-{n}")).events for n in numbers}
    queues = {post: list(events) for post, events in per_post.items()}
    merged: list[Event] = []
    while any(queues.values()):
        post = data.draw(st.sampled_from(sorted(p for p, q in queues.items() if q)))
        merged.append(queues[post].pop(0))
    states = fold(merged)
    assert states == {post: fold(events)[post] for post, events in per_post.items()}


@fold_settings
@given(stories(), st.data())
def test_folding_in_batches_with_redeliveries_across_batches_gives_the_same_state(story: Story,
                                                                                    data: st.DataObject) -> None:
    """What the projector does: batches of a post's events, a batch sometimes delivered again after a restart."""
    events = story.events
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=len(events) - 1), max_size=4)))
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    state: PostState | None = None
    for batch in batches:
        state = apply_all(state, batch)
        if data.draw(st.booleans()):
            assert apply_all(state, batch) is state, "a batch delivered again changes nothing"
    assert state == fold(events)["post-1"]
