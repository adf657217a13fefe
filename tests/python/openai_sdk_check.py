"""Drives a running switchboard with the official `openai` SDK (run by tests/openai_sdk.rs).

Environment: SB_BASE_URL (switchboard's /v1), SB_API_KEY (a valid client key), SB_REPLY (the
mock upstream's full reply text), SB_PROMPT_TOKENS / SB_COMPLETION_TOKENS (its usage). The
catalog has `primary` (always HTTP 500), `secondary` (model "mock"), `alt` (model "mock-alt")
and `dying` (model "mock-die-3", dies after three deltas). Every check asserts; the script
prints one line per passed check and exits non-zero at the first failure.
"""

import os
import sys

import openai

BASE = os.environ["SB_BASE_URL"]
KEY = os.environ["SB_API_KEY"]
REPLY = os.environ["SB_REPLY"]
PROMPT_TOKENS = int(os.environ["SB_PROMPT_TOKENS"])
COMPLETION_TOKENS = int(os.environ["SB_COMPLETION_TOKENS"])
MESSAGES = [{"role": "user", "content": "Write a haiku about routers."}]
QUALITY_FIRST = {"switchboard": {"trade_off": 1.0}}

client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=30)


def passed(name):
    print(f"ok {name}", flush=True)


def non_streaming():
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES, extra_body=QUALITY_FIRST
    )
    r = raw.parse()
    assert r.choices[0].message.content == REPLY, r
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == PROMPT_TOKENS, r.usage
    assert r.usage.completion_tokens == COMPLETION_TOKENS, r.usage
    assert r.usage.total_tokens == PROMPT_TOKENS + COMPLETION_TOKENS
    # `primary` fails with HTTP 500; the answer comes from the next candidate.
    assert raw.headers["x-switchboard-backend"] == "secondary", dict(raw.headers)
    assert r.model == "mock", r.model
    assert len(raw.headers["x-switchboard-decision-id"]) == 32
    assert raw.headers["x-switchboard-intent"], dict(raw.headers)
    extra = r.model_extra["switchboard"]
    assert extra["attempts"][0]["backend"] == "primary", extra
    assert "500" in extra["attempts"][0]["error"], extra
    passed("non-streaming call, routed, failed over from primary (500) to secondary")


def streaming():
    stream = client.chat.completions.create(
        model="auto", messages=MESSAGES, stream=True, extra_body=QUALITY_FIRST
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY, (text, REPLY)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks), "usage only with include_usage"
    assert {c.model for c in chunks} == {"mock"}
    assert len({c.id for c in chunks}) == 1
    passed(f"streaming: {len(chunks)} chunks, deltas concatenate to the mock's text")


def include_usage():
    stream = client.chat.completions.create(
        model="auto",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=QUALITY_FIRST,
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [], last
    assert last.usage.prompt_tokens == PROMPT_TOKENS, last.usage
    assert last.usage.completion_tokens == COMPLETION_TOKENS, last.usage
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    passed("streaming with include_usage: final chunk has no choices and the usage")


def pinned():
    raw = client.chat.completions.with_raw_response.create(model="alt", messages=MESSAGES)
    r = raw.parse()
    assert r.model == "mock-alt", r.model
    assert raw.headers["x-switchboard-backend"] == "alt"
    assert r.choices[0].message.content == REPLY
    stream = client.chat.completions.create(model="alt", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == REPLY
    passed("pinned model: answered by the named backend, streaming and not")


def auto_policy():
    r = client.chat.completions.create(model="auto:quality_first", messages=MESSAGES)
    assert r.choices[0].message.content == REPLY
    passed("model auto:<policy>")


def unknown_model():
    try:
        client.chat.completions.create(model="gpt-17-ultra", messages=MESSAGES)
    except openai.NotFoundError as e:
        assert e.status_code == 404
        assert e.body["code"] == "model_not_found", e.body
        assert e.body["param"] == "model", e.body
        assert "gpt-17-ultra" in e.body["message"]
        passed("unknown model: openai.NotFoundError (404, model_not_found)")
        return
    raise AssertionError("unknown model was accepted")


def bad_request():
    try:
        client.chat.completions.create(
            model="auto", messages=MESSAGES, extra_body={"switchboard": {"trade_off": 3}}
        )
    except openai.BadRequestError as e:
        assert e.body["param"] == "switchboard.trade_off", e.body
        passed("invalid preference: openai.BadRequestError naming switchboard.trade_off")
        return
    raise AssertionError("trade_off 3 was accepted")


def mid_stream_failure():
    stream = client.chat.completions.create(model="dying", messages=MESSAGES, stream=True)
    got = ""
    try:
        for c in stream:
            if c.choices:
                got += c.choices[0].delta.content or ""
    except openai.APIError as e:
        assert "dying" in e.message, e.message
        assert got and REPLY.startswith(got), got
        passed("failure after the first byte: openai.APIError inside the stream")
        return
    raise AssertionError("a dying upstream ended the stream cleanly")


def auth_failure():
    bad = openai.OpenAI(base_url=BASE, api_key="not-a-key", max_retries=0)
    for call in (
        lambda: bad.chat.completions.create(model="auto", messages=MESSAGES),
        lambda: bad.models.list(),
    ):
        try:
            call()
        except openai.AuthenticationError as e:
            assert e.status_code == 401
            assert e.body["code"] == "invalid_api_key", e.body
            continue
        raise AssertionError("a wrong key was accepted")
    passed("wrong API key: openai.AuthenticationError (401)")


def models():
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "auto", ids
    for want in ("auto:quality_first", "primary", "secondary", "alt", "dying"):
        assert want in ids, ids
    passed("models.list: auto, the policies, the backends")


CHECKS = [
    non_streaming,
    streaming,
    include_usage,
    pinned,
    auto_policy,
    unknown_model,
    bad_request,
    mid_stream_failure,
    auth_failure,
    models,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
    print(f"{len(CHECKS)} checks passed (openai {openai.__version__})")
    sys.exit(0)
