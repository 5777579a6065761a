"""Invariant 1 over generated histories: a retry never publishes a platform that succeeded or is still in flight."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings

from projections.decide import decide, retry_preview
from projections.fold import fold
from schemas.commands import ForceRepublishRequested, RetryRequested
from tests.unit.test_fold_properties import Story, stories

AT = datetime(2025, 11, 17, 11, 0, tzinfo=UTC)


@settings(max_examples=150, deadline=None)
@given(stories())
def test_a_retry_publishes_exactly_the_targeted_platforms_that_did_not_succeed_and_are_not_in_flight(
    story: Story,
) -> None:
    state = fold(story.events)["post-1"]
    retry = decide(state, RetryRequested(command_id="cmd-new", post_id="post-1", requested_at=AT))
    expected = tuple(p for p in story.targeted
                     if story.latest_success.get(p) is not True and p not in story.in_flight | story.awaiting)
    assert retry.platforms == expected
    assert set(retry.unresolved) == story.in_flight
    assert retry.no_op == (not expected)
    assert set(retry.platforms) | set(retry.skipped) == set(story.targeted)
    assert (retry_preview(state) == f"Note: {retry.log_line}") == retry.no_op

    forced = decide(state, ForceRepublishRequested(command_id="cmd-force", post_id="post-1", requested_at=AT))
    assert forced.platforms == tuple(p for p in story.targeted if p not in story.in_flight | story.awaiting)
    assert forced.forced

    again = decide(state, RetryRequested(command_id="cmd-0", post_id="post-1", requested_at=AT))
    assert again.duplicate_command and again.platforms == ()
