"""Tool calls through the official `openai` client against a server running the real model: a
weather question answered greedily with a `get_weather` call (whole and streamed, the streamed
deltas joined equal to the whole call), then the tool's result sent back gets a text answer.
Usage: tools_check.py BASE_URL API_KEY"""
import json
import sys

from openai import OpenAI

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}]
QUESTION = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


def streamed_calls(client, model):
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=100, stream=True
    )
    calls, finish = {}, None
    for chunk in stream:
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += d.id or ""
                call["name"] += (d.function and d.function.name) or ""
                call["arguments"] += (d.function and d.function.arguments) or ""
    return [calls[i] for i in sorted(calls)], finish


def main(base_url, api_key):
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    chat = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=100
    )
    choice = chat.choices[0]
    check(choice.finish_reason == "tool_calls", f"finish {choice.finish_reason}: {choice.message}")
    calls = choice.message.tool_calls or []
    check(len(calls) == 1 and calls[0].type == "function", f"one call: {calls}")
    call = calls[0]
    check(call.id.startswith("call_") and call.function.name == "get_weather", f"{call}")
    args = json.loads(call.function.arguments)
    check("paris" in str(args.get("city", "")).lower(), f"arguments {call.function.arguments}")

    streamed, finish = streamed_calls(client, model)
    check(finish == "tool_calls", f"streamed finish {finish}")
    check(len(streamed) == 1, f"streamed calls {streamed}")
    check(streamed[0]["name"] == call.function.name, f"streamed name {streamed}")
    check(streamed[0]["arguments"] == call.function.arguments, f"streamed arguments {streamed}")
    check(streamed[0]["id"].startswith("call_"), f"streamed id {streamed}")

    follow_up = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})},
    ]
    answer = client.chat.completions.create(
        model=model, messages=follow_up, tools=TOOLS, temperature=0, max_tokens=60
    )
    a = answer.choices[0]
    check(a.finish_reason in ("stop", "length") and not a.message.tool_calls, f"answer {a}")
    check(isinstance(a.message.content, str) and a.message.content.strip(), f"text answer {a}")
    check(answer.usage.prompt_tokens > chat.usage.prompt_tokens, f"usage {answer.usage}")
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
