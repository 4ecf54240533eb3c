"""`DeepRecall`, `AsyncDeepRecall` and `QueryBudget` against a live server, following the
documented examples of the `deeprecall` library they stand in for (its quick start, budget
guardrails, batch and async guides), with only the import and the constructor changed.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from deeprecall_client import AsyncDeepRecall, DeepRecall, DeepRecallResult, QueryBudget

ENDPOINT = os.environ.get("DEEPRECALL_ENDPOINT", "")
API_KEY = os.environ.get("DEEPRECALL_API_KEY") or None
DOCUMENTS = [
    "The Aurora Strip controller board is manufactured by Kestrel Fabrication.",
    "Kestrel Fabrication is headquartered in Tampere, Finland.",
]
METADATAS = [{"source": "products.txt"}, {"source": "suppliers.txt"}]
QUESTION = "Which city is the maker of the Aurora Strip controller board headquartered in?"


def engine(collection: str) -> DeepRecall:
    assert ENDPOINT, "DEEPRECALL_ENDPOINT names the server under test"
    return DeepRecall(ENDPOINT, api_key=API_KEY, collection=collection, timeout=60)


def test_the_quick_start_adds_documents_and_answers_with_sources_and_usage() -> None:
    with engine("compat-quick") as deep:
        ids = deep.add_documents(
            documents=DOCUMENTS, metadatas=METADATAS, ids=["aurora-strip", "kestrel"]
        )
        assert ids == ["aurora-strip", "kestrel"]
        result = deep.query(QUESTION)
        assert isinstance(result, DeepRecallResult)
        assert "Tampere" in result.answer, result.answer
        assert {source.id for source in result.sources} >= {"aurora-strip", "kestrel"}
        assert result.sources[0].metadata["source"] in {"products.txt", "suppliers.txt"}
        assert result.usage.total_input_tokens > 0 and result.usage.total_calls > 0
        assert result.usage.model_breakdown
        assert result.reasoning_trace and result.reasoning_trace[0].iteration == 1
        assert result.execution_time >= 0 and result.query == QUESTION
        assert result.error is None and result.confidence is not None
        assert result.to_dict()["answer"] == result.answer


def test_add_documents_generates_ids_when_none_are_given() -> None:
    with engine("compat-ids") as deep:
        ids = deep.add_documents(["A note without an id."])
        assert len(ids) == 1 and ids[0]


def test_a_budget_guardrail_ends_the_query_with_a_partial_answer() -> None:
    with engine("compat-budget") as deep:
        deep.add_documents(DOCUMENTS, ids=["aurora-strip", "kestrel"])
        result = deep.query(QUESTION, budget=QueryBudget(max_search_calls=1))
        assert result.budget_status is not None
        assert result.budget_status["search_calls_used"] == 1, result.budget_status
        assert result.budget_status["limits"]["max_search_calls"] == 1


def test_filters_and_top_k_bound_the_searches() -> None:
    with engine("compat-filters") as deep:
        deep.add_documents(DOCUMENTS, metadatas=METADATAS, ids=["aurora-strip", "kestrel"])
        result = deep.query(QUESTION, top_k=1, filters={"source": "suppliers.txt"})
        assert [source.id for source in result.sources] == ["kestrel"]


def test_query_batch_returns_results_in_input_order_with_errors_in_place() -> None:
    with engine("compat-batch") as deep:
        deep.add_documents(DOCUMENTS, ids=["aurora-strip", "kestrel"])
        questions = [QUESTION, "   ", "Who manufactures the Aurora Strip controller board?"]
        results = deep.query_batch(questions, max_concurrency=2)
        assert [result.query for result in results] == questions
        assert "Tampere" in results[0].answer
        assert results[1].error and "query" in results[1].error
        assert "Kestrel" in results[2].answer
        with pytest.raises(ValueError):
            deep.query_batch(questions, max_concurrency=0)


def test_async_queries_run_concurrently_under_a_context_manager() -> None:
    async def main() -> list[DeepRecallResult]:
        async with AsyncDeepRecall(
            ENDPOINT, api_key=API_KEY, collection="compat-async", timeout=60
        ) as deep:
            await deep.add_documents(DOCUMENTS, ids=["aurora-strip", "kestrel"])
            return list(
                await asyncio.gather(
                    deep.query(QUESTION),
                    deep.query("Who manufactures the Aurora Strip controller board?"),
                )
            )

    first, second = asyncio.run(main())
    assert "Tampere" in first.answer
    assert "Kestrel" in second.answer
