"""Golden renders of chat templates other than the test vocabulary's own (tests/data/templates/*.jinja:
Llama 3.1's, which Llama 3.3 shares, and Llama 3.2's), by transformers' own Jinja renderer.

    .venv-golden/bin/python scripts/golden/templates.py   -> tests/golden/templates.json

Each case is a conversation with its variables as JSON text (the Rust side keeps object keys in
written order only from text): plain chats, tools in the first user message (the templates'
default), tools in the system message, and a whole tool round (the assistant's call, the tool's
result, the next generation prompt). `date_string` is fixed (Llama 3.2's template otherwise reads
today's date).
"""
import json
from pathlib import Path

from transformers.utils.chat_template_utils import render_jinja_template

from model_util import versions

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "tests/data/templates"
OUT = REPO / "tests/golden/templates.json"

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city <today> & 'now', in °C",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "城市"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}]

CALL = [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]

CASES = [
    ("plain", [{"role": "user", "content": "Hello!"}], None, {}),
    ("system", [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again"}], None, {}),
    ("tools_in_user_message", [{"role": "user", "content": "Weather in Paris?"}], TOOLS, {}),
    ("tools_in_system", [{"role": "system", "content": "You help."},
                         {"role": "user", "content": "Weather in Paris?"}], TOOLS,
     {"tools_in_user_message": False}),
    ("tool_round", [{"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": "", "tool_calls": CALL},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}], TOOLS, {}),
]


def main() -> None:
    doc = {"generated_by": "scripts/golden/templates.py", "versions": versions(), "templates": []}
    for path in sorted(TEMPLATES.glob("*.jinja")):
        source = path.read_text()
        for name, messages, tools, extra in CASES:
            variables = {"messages": messages, "add_generation_prompt": True, "bos_token": "<|begin_of_text|>",
                         "date_string": "26 Jul 2024", **extra}
            if tools is not None:
                variables["tools"] = tools
            kwargs = {k: v for k, v in variables.items() if k not in ("messages", "tools", "add_generation_prompt")}
            rendered = render_jinja_template([messages], tools=tools, chat_template=source,
                                             add_generation_prompt=True, **kwargs)[0][0]
            doc["templates"].append({"template": path.name, "case": name,
                                     "variables": json.dumps(variables, ensure_ascii=False), "rendered": rendered})
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT.relative_to(REPO)}: {len(doc['templates'])} renders")


if __name__ == "__main__":
    main()
