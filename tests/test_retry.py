"""The retry loop of the calls that read nothing worth resuming (the Hub's API, a remote file's size):
its backoff and its give-up, with the waits recorded rather than slept."""

from __future__ import annotations

import pytest

from modelfix.errors import NetworkError
from modelfix.retry import FetchPolicy, Transient, parse_retry_after, retry_after, with_retries


def _flaky(failures: list[Transient], answer: str = "ok"):
    def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return answer

    return attempt


def test_transient_faults_are_retried_with_growing_jittered_waits():
    waits: list[float] = []
    policy = FetchPolicy(attempts=5, base_delay=1.0, max_delay=3.0)

    found = with_retries(_flaky([Transient("503")] * 4), "org/repo: ", "the Hub", policy=policy, sleep=waits.append)

    assert found == "ok"
    assert len(waits) == 4
    for failures, wait in enumerate(waits, 1):  # half to all of base * 2**(n-1), at most max_delay
        full = min(3.0, 1.0 * 2 ** (failures - 1))
        assert full / 2 <= wait <= full


def test_a_retry_after_is_honoured_up_to_the_policy_s_bound():
    waits: list[float] = []
    policy = FetchPolicy(attempts=5, base_delay=0.01, max_retry_after=60.0)
    faults = [Transient("429", retry_after=7.0), Transient("429", retry_after=600.0)]

    with_retries(_flaky(faults), "org/repo: ", "the Hub", policy=policy, sleep=waits.append)

    assert waits == [7.0, 60.0]


def test_it_gives_up_after_the_attempts_and_says_where_to_look():
    waits: list[float] = []
    policy = FetchPolicy(attempts=3, base_delay=0.01)

    with pytest.raises(NetworkError) as info:
        with_retries(_flaky([Transient("reset")] * 10), "org/repo: ", "HF_ENDPOINT", policy=policy, sleep=waits.append)

    assert len(waits) == 2  # three attempts, two waits between them
    assert str(info.value).startswith("org/repo: reset (gave up after 3 attempts)") and "HF_ENDPOINT" in str(info.value)


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"RateLimit": '"api";r=0;t=55', "Retry-After": "3"}, 55.0),  # the Hub's spent quota first
        ({"RateLimit": '"resolvers";r=0;t=7'}, 7.0),
        ({"RateLimit": '"api";r=12;t=55', "Retry-After": "3"}, 3.0),  # quota left: not why it failed
        ({"RateLimit": "garbage", "Retry-After": "4"}, 4.0),
        ({}, None),
    ],
)
def test_the_wait_an_answer_asks_for_reads_the_hub_s_quota_then_retry_after(headers, wait):
    import httpx2

    assert retry_after(httpx2.Headers(headers)) == wait
