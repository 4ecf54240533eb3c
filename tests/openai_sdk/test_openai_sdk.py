"""The official OpenAI Python SDK against DeepRecall's HTTP API: what a user who switches by
changing `base_url` does. The collection `sdk` holds two notes (the Falcon project's lead and
where she works); the test that runs this script adds them.

Environment: DEEPRECALL_HTTP_BASE_URL (http://127.0.0.1:PORT/v1), DEEPRECALL_API_KEY (an admin
key), DEEPRECALL_LIMITED_KEY (a key with a burst of 2 and no refill while this runs).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import openai
from openai import OpenAI

BASE_URL = os.environ["DEEPRECALL_HTTP_BASE_URL"]
API_KEY = os.environ["DEEPRECALL_API_KEY"]
LIMITED_KEY = os.environ["DEEPRECALL_LIMITED_KEY"]
QUESTION = "Who leads the Falcon project?"


def client(api_key: str = API_KEY) -> OpenAI:
    # No retries: a refusal must surface as the SDK's exception, not be retried away.
    return OpenAI(base_url=BASE_URL, api_key=api_key, max_retries=0, timeout=60)


def extra(model: Any, name: str) -> Any:
    """A field the OpenAI types do not declare, kept by the SDK's models as an extra."""
    extras = model.model_extra or {}
    return extras.get(name)


def test_models_list_names_deeprecall_and_each_collection() -> None:
    ids = [model.id for model in client().models.list()]
    assert ids[0] == "deeprecall", ids
    assert "deeprecall-sdk" in ids, ids


def test_a_completion_carries_the_cited_answer_and_the_extension() -> None:
    completion = client().chat.completions.create(
        model="deeprecall-sdk",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTION},
        ],
    )
    answer = completion.choices[0].message.content or ""
    assert "Ada Lovelace" in answer, answer
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    deeprecall = extra(completion, "deeprecall")
    assert deeprecall["citations"][0] == "falcon", deeprecall
    assert deeprecall["sources"][0]["id"] == "falcon"


def test_extra_body_options_reach_the_engine() -> None:
    completion = client().chat.completions.create(
        model="deeprecall",
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={
            "collection": "sdk",
            "budget": {"max_search_calls": 1},
            "top_k": 1,
            "skip_cache": True,
        },
    )
    deeprecall = extra(completion, "deeprecall")
    status = deeprecall["budget_status"]
    assert status["limits"]["max_search_calls"] == 1, status
    assert status["used"]["search_calls"] == 1, status
    assert len(deeprecall["sources"]) == 1, deeprecall["sources"]


def test_a_stream_sends_reasoning_then_the_answer_then_usage() -> None:
    stream = client().chat.completions.create(
        model="deeprecall-sdk",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"skip_cache": True},
    )
    reasoning: list[str] = []
    answer: list[str] = []
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            thought = extra(choice.delta, "reasoning_content")
            if thought:
                assert not answer, "reasoning comes before the answer"
                reasoning.append(thought)
            if choice.delta.content:
                answer.append(choice.delta.content)
    assert reasoning, "reasoning steps were streamed"
    assert "Ada Lovelace" in "".join(answer), answer
    assert usage is not None and usage.completion_tokens > 0


def test_a_wrong_key_raises_authentication_error() -> None:
    try:
        client("not-a-key-000000000000").models.list()
    except openai.AuthenticationError as error:
        assert error.status_code == 401
    else:
        raise AssertionError("a wrong key was let in")


def test_a_bad_option_raises_bad_request_naming_the_field() -> None:
    try:
        client().chat.completions.create(
            model="deeprecall",
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"budget": {"max_tokens": 0}},
        )
    except openai.BadRequestError as error:
        assert error.status_code == 400
        assert "budget.max_tokens" in str(error), str(error)
    else:
        raise AssertionError("a zero token budget was accepted")


def test_past_the_burst_raises_rate_limit_error() -> None:
    limited = client(LIMITED_KEY)
    limited.models.list()
    limited.models.list()
    try:
        limited.models.list()
    except openai.RateLimitError as error:
        assert error.status_code == 429
        assert int(error.response.headers["retry-after"]) >= 1
    else:
        raise AssertionError("a third request within the burst of 2 was let in")


TESTS: list[Callable[[], None]] = [
    test_models_list_names_deeprecall_and_each_collection,
    test_a_completion_carries_the_cited_answer_and_the_extension,
    test_extra_body_options_reach_the_engine,
    test_a_stream_sends_reasoning_then_the_answer_then_usage,
    test_a_wrong_key_raises_authentication_error,
    test_a_bad_option_raises_bad_request_naming_the_field,
    test_past_the_burst_raises_rate_limit_error,
]


def main() -> int:
    failed = 0
    for test in TESTS:
        try:
            test()
        except Exception as error:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            print(f"FAIL {test.__name__}: {error!r}")
        else:
            print(f"ok   {test.__name__}")
    print(f"{len(TESTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
