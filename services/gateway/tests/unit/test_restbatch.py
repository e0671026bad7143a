"""REST :predict bodies merged and split as JSON (`gateway.clients.restbatch`)."""

from __future__ import annotations

import json

import orjson
import pytest
from gateway.clients.batchkeys import rest_key
from gateway.clients.restbatch import (
    MAX_MERGED_BODY_BYTES,
    RestPredict,
    merge_rest,
    rest_predict,
    split_rest,
)

PATH = "/v1/models/m:predict"


def _parsed(document: object, path: str = PATH) -> RestPredict:
    request = rest_predict(path, json.dumps(document).encode())
    assert request is not None, document
    return request


def _key(document: object, path: str = PATH) -> object:
    return rest_key(_parsed(document, path)).key


def test_rows_and_columns_report_their_row_count() -> None:
    assert _parsed({"instances": [[1, 2], [3, 4], [5, 6]]}).rows == 3
    assert _parsed({"instances": [{"a": 1, "b": [1, 2]}]}).rows == 1
    assert _parsed({"inputs": {"a": [1, 2], "b": [[1], [2]]}}).rows == 2
    assert _parsed({"inputs": [[1.5], [2.5]], "signature_name": "s"}).rows == 2


def test_the_key_holds_the_path_signature_format_names_and_row_shapes() -> None:
    base = _key({"instances": [{"a": [1.0, 2.0]}]})
    assert _key({"instances": [{"a": [3.0, 4.0]}, {"a": [5.0, 6.0]}]}) == base
    for other in (
        {"instances": [{"a": [1.0, 2.0, 3.0]}]},
        {"instances": [{"b": [1.0, 2.0]}]},
        {"instances": [[1.0, 2.0]]},
        {"instances": [{"a": [1.0, 2.0]}], "signature_name": "other"},
        {"inputs": {"a": [[1.0, 2.0]]}},
    ):
        assert _key(other) != base, other
    assert _key({"instances": [{"a": [1.0, 2.0]}]}, "/v1/models/n:predict") != base


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"instances": []}',
        b'{"instances": {"a": 1}}',
        b'{"instances": [[1]], "inputs": [[1]]}',
        b'{"instances": [[1]], "extra": 1}',
        b'{"instances": [[1]], "signature_name": 3}',
        b'{"instances": [{"b64": "AAAA"}]}',
        b'{"inputs": 3}',
        b'{"inputs": []}',
        b'{"inputs": {"a": [1, 2], "b": [1]}}',
        b'{"inputs": {"a": 1}}',
        b'{"inputs": {}}',
        b'{"instances": [NaN]}',
    ],
    ids=[
        "malformed",
        "not-an-object",
        "no-rows",
        "rows-not-a-list",
        "both-formats",
        "unknown-key",
        "signature-not-text",
        "binary-row",
        "scalar-input",
        "empty-input",
        "ragged-columns",
        "column-without-batch",
        "no-columns",
        "nan",
    ],
)
def test_bodies_that_cannot_merge_go_on_their_own(body: bytes) -> None:
    assert rest_predict(PATH, body) is None


def test_large_bodies_go_on_their_own_unread() -> None:
    rows = [[0.5] * 64] * (MAX_MERGED_BODY_BYTES // 200)
    body = json.dumps({"instances": rows}).encode()
    assert len(body) > MAX_MERGED_BODY_BYTES
    assert rest_predict(PATH, body) is None


def test_rows_merge_in_order_with_the_signature_name() -> None:
    first = _parsed({"signature_name": "s", "instances": [{"a": 1}, {"a": 2}]})
    second = _parsed({"signature_name": "s", "instances": [{"a": 3}]})
    merged = orjson.loads(merge_rest([first, second]))
    assert merged == {
        "signature_name": "s",
        "instances": [{"a": 1}, {"a": 2}, {"a": 3}],
    }


def test_columns_merge_per_input_and_single_inputs_as_lists() -> None:
    named = [
        _parsed({"inputs": {"a": [1, 2], "b": [[1.5], [2.5]]}}),
        _parsed({"inputs": {"a": [3], "b": [[3.5]]}}),
    ]
    assert orjson.loads(merge_rest(named)) == {
        "inputs": {"a": [1, 2, 3], "b": [[1.5], [2.5], [3.5]]}
    }
    single = [_parsed({"inputs": [[1.0]]}), _parsed({"inputs": [[2.0], [3.0]]})]
    assert orjson.loads(merge_rest(single)) == {"inputs": [[1.0], [2.0], [3.0]]}


def test_values_keep_their_doubles_through_a_merge() -> None:
    text = b'{"instances": [0.1, 1e-320, 3.141592653589793238, -0.0, 9007199254740993]}'
    request = rest_predict(PATH, text)
    assert request is not None
    merged = orjson.loads(merge_rest([request]))["instances"]
    assert merged == json.loads(text)["instances"]
    assert [float(v) for v in merged] == [
        float(v) for v in json.loads(text)["instances"]
    ]


def test_a_row_answer_is_cut_into_each_callers_rows() -> None:
    first = _parsed({"instances": [[1], [2]]})
    answer = orjson.dumps({"predictions": [[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]})
    parts = split_rest(answer, first, [2, 1])
    assert parts is not None
    assert [orjson.loads(part) for part in parts] == [
        {"predictions": [[0.1, 0.9], [0.2, 0.8]]},
        {"predictions": [[0.3, 0.7]]},
    ]


def test_a_columnar_answer_is_cut_per_output() -> None:
    first = _parsed({"inputs": {"a": [1]}})
    answer = orjson.dumps({"outputs": {"scores": [[1, 2], [3, 4]], "label": [0, 1]}})
    parts = split_rest(answer, first, [1, 1])
    assert parts is not None
    assert [orjson.loads(part) for part in parts] == [
        {"outputs": {"scores": [[1, 2]], "label": [0]}},
        {"outputs": {"scores": [[3, 4]], "label": [1]}},
    ]
    single = split_rest(orjson.dumps({"outputs": [5, 6, 7]}), first, [2, 1])
    assert single is not None
    assert [orjson.loads(part) for part in single] == [
        {"outputs": [5, 6]},
        {"outputs": [7]},
    ]


@pytest.mark.parametrize(
    ("document", "answer"),
    [
        ({"instances": [[1]]}, {"predictions": [1, 2, 3]}),
        ({"instances": [[1]]}, {"predictions": 4}),
        ({"instances": [[1]]}, {"outputs": [1, 2]}),
        ({"inputs": {"a": [1]}}, {"outputs": {"scores": [1, 2], "total": 3}}),
        ({"inputs": {"a": [1]}}, {"outputs": [[1, 2, 3]]}),
    ],
    ids=["too-many-rows", "no-batch", "wrong-format", "one-output-unbatched", "fixed"],
)
def test_answers_without_the_merged_rows_are_not_cut(
    document: object, answer: object
) -> None:
    assert split_rest(orjson.dumps(answer), _parsed(document), [1, 1]) is None


def test_an_answer_that_is_not_json_is_not_cut() -> None:
    assert split_rest(b"<html>", _parsed({"instances": [[1]]}), [1]) is None
