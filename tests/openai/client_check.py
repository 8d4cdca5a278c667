"""Drives a running layerstream server with the official `openai` client; exits non-zero with a
message on the first check that fails. Usage: client_check.py BASE_URL API_KEY
(e.g. http://127.0.0.1:8080/v1 sk-test)."""
import sys

import openai
from openai import OpenAI


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


def check_greedy_entry(token, logprob, top, n):
    """A greedy token's log-probability: at most 0, and the token is the first of `top` (n
    (token, logprob) pairs, most probable first)."""
    check(logprob <= 0, f"logprob {logprob} > 0")
    check(len(top) == n, f"{len(top)} alternatives, asked {n}")
    check(top[0] == (token, logprob), f"greedy {token!r} {logprob} is not the top: {top}")
    check(all(a[1] >= b[1] for a, b in zip(top, top[1:])), f"alternatives not ordered: {top}")


def check_logprobs(client, model, messages):
    args = dict(model=model, messages=messages, max_completion_tokens=6, temperature=0, seed=3,
                logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**args)
    content = whole.choices[0].logprobs.content
    check(len(content) == whole.usage.completion_tokens, f"{len(content)} logprobs entries")
    text = bytes(b for e in content for b in e.bytes).decode("utf-8", "replace")
    check(text == whole.choices[0].message.content, f"tokens {text!r} vs text")
    for e in content:
        top = [(t.token, t.logprob) for t in e.top_logprobs]
        check_greedy_entry(e.token, e.logprob, top, 3)
    streamed = []
    for chunk in client.chat.completions.create(**args, stream=True):
        for c in chunk.choices:
            streamed += c.logprobs.content if c.logprobs and c.logprobs.content else []
    check([(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content],
          "streamed logprobs differ from the whole answer's")

    comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5,
                                     temperature=0, logprobs=2)
    lp = comp.choices[0].logprobs
    check(len(lp.tokens) == comp.usage.completion_tokens == len(lp.token_logprobs), f"{lp}")
    check(lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), f"{lp.text_offset}")
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        ranked = sorted(top.items(), key=lambda kv: -kv[1])
        check(len(top) <= 2 and ranked[0][1] == logprob and logprob <= 0, f"{token!r}: {top}")
    try:
        client.chat.completions.create(model=model, messages=messages, logprobs=True,
                                       top_logprobs=21)
        check(False, "top_logprobs=21 was accepted")
    except openai.BadRequestError as e:
        check(e.param == "top_logprobs", f"top_logprobs: {e.body}")


def check_stop(client, model, messages, full):
    """A stop string from the greedy answer cuts it there, finish_reason "stop"."""
    if len(full) < 3:
        return
    stop = full[1:3]
    cut = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=8,
                                         temperature=0, seed=3, stop=[stop])
    c = cut.choices[0]
    check((c.message.content or "") == full[:full.index(stop)] and c.finish_reason == "stop",
          f"stop {stop!r}: {c.message.content!r} ({c.finish_reason}) from {full!r}")


def check_n(client, model, messages):
    args = dict(model=model, messages=messages, max_completion_tokens=8, temperature=1.0, seed=11,
                n=3)
    first = client.chat.completions.create(**args)
    again = client.chat.completions.create(**args)
    check([c.index for c in first.choices] == [0, 1, 2], f"indices {first.choices}")
    texts = [c.message.content for c in first.choices]
    check(texts == [c.message.content for c in again.choices], f"n=3 not reproducible: {texts}")
    check(len(set(texts)) > 1, f"three choices, one text: {texts}")
    u = first.usage
    check(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage {u}")
    single = client.chat.completions.create(**{**args, "n": 1})
    check(u.prompt_tokens == single.usage.prompt_tokens, f"prompt counted once: {u}")
    check(single.choices[0].message.content == texts[0], "choice 0 draws with the seed itself")
    streamed, usage = ["", "", ""], None
    for chunk in client.chat.completions.create(**args, stream=True,
                                                 stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    check(streamed == texts, f"streamed {streamed} vs whole {texts}")
    check(usage.completion_tokens == u.completion_tokens, f"streamed usage {usage}")
    comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4, n=2,
                                     seed=5)
    check(sorted(c.index for c in comp.choices) == [0, 1], f"{comp}")
    try:
        client.chat.completions.create(model=model, messages=messages, n=17)
        check(False, "n=17 was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.param == "n", f"n=17: {e.status_code} {e.param} {e.body}")


def main(base_url, api_key):
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    models = client.models.list().data
    check(len(models) == 1 and models[0].id, f"one model listed: {models}")
    model = models[0].id
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Say hello"}]},
    ]

    chat = client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=8, temperature=0, seed=3
    )
    choice = chat.choices[0]
    check(chat.object == "chat.completion", chat.object)
    check(choice.message.role == "assistant", choice.message.role)
    check(isinstance(choice.message.content, str) and choice.message.content, "content")
    check(choice.finish_reason in ("stop", "length"), choice.finish_reason)
    check(0 < chat.usage.completion_tokens <= 8, f"usage {chat.usage}")
    check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "total")

    stream = client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=8, temperature=0, seed=3,
        stream=True, stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    check(text == choice.message.content, f"streamed {text!r} vs whole {choice.message.content!r}")
    check(finish == choice.finish_reason, f"finish {finish}")
    check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, f"usage {usage}")
    # The second request reused the first one's prompt blocks.
    check(usage.prompt_tokens_details.cached_tokens > 0, f"cached {usage.prompt_tokens_details}")

    comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, seed=1)
    check(comp.object == "text_completion" and isinstance(comp.choices[0].text, str), f"{comp}")
    check(comp.usage.completion_tokens <= 6, f"{comp.usage}")

    check_stop(client, model, messages, choice.message.content)
    try:
        client.chat.completions.create(model=model, messages=messages, max_completion_tokens=1,
                                       response_format={"type": "json_object"})
        check(False, "response_format json_object was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.param == "response_format", f"unsupported: {e.body}")

    check_n(client, model, messages)
    check_logprobs(client, model, messages)

    stranger = OpenAI(base_url=base_url, api_key=api_key + "-wrong", max_retries=0, timeout=120)
    try:
        stranger.chat.completions.create(model=model, messages=messages, max_completion_tokens=1)
        check(False, "a wrong API key was accepted")
    except openai.AuthenticationError as e:
        check(e.status_code == 401 and e.code == "invalid_api_key", f"wrong key: {e.status_code} {e.body}")
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
