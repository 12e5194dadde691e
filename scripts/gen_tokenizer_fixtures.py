#!/usr/bin/env python3
"""Reference fixtures for crates/tokenizer-bridge, produced by Hugging Face's own code.

Why: the Rust crate must give the same token ids as HF `tokenizers` and the same
chat-template text as transformers' jinja2 rendering; these files are that oracle.

Writes (into crates/tokenizer-bridge/tests/fixtures/):
  reference_ids.json   - [{name, text, ids, decoded, decoded_skip_special}] from the
                         Python `tokenizers` package on the bundled tokenizer.json
  chat_templates.json  - [{name, messages, tools_json, add_generation_prompt,
                         rendered, ids}] rendered by jinja2 exactly as transformers
                         does it (see `transformers_env` below)

The tokenizer files are read from the crate's bundled copy
(crates/tokenizer-bridge/assets/qwen3), so fixtures always describe what ships.
`--refresh-assets DIR` first refreshes that copy from DIR (e.g. ../shared/qwen3):
tokenizer.json is stored gzip-compressed (level 9, no name/mtime: reproducible).

If `transformers` is installed, every rendered chat is also checked against
`AutoTokenizer.apply_chat_template` (and every id list against its tokenizer).

Usage (from the repo root):
  .venv/bin/pip install -q tokenizers jinja2   # 0.22.2 (the Rust crate's) and 0.23.3 agree
  .venv/bin/python scripts/gen_tokenizer_fixtures.py [--refresh-assets ../shared/qwen3]
"""

import argparse
import gzip
import hashlib
import json
import shutil
from datetime import datetime
from pathlib import Path

import jinja2
import tokenizers
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = Path(__file__).resolve().parent.parent
CRATE = ROOT / "crates" / "tokenizer-bridge"
ASSETS = CRATE / "assets" / "qwen3"
FIXTURES = CRATE / "tests" / "fixtures"

# Each entry: (name, text). Chosen to cover every branch of the Qwen2 pre-tokenizer
# regex and the byte-level alphabet: scripts, multi-byte emoji that BPE splits
# mid-character, whitespace runs, digits (split one by one), contractions and the
# special/added tokens that must be matched inside ordinary text.
TEXTS = [
    ("hello_wave", "Hello! 👋"),
    ("empty", ""),
    ("latin_accents", "Café naïve façade — déjà vu in São Paulo; Größe, Ångström, piñata, œuvre, Dvořák."),
    ("chinese", "你好，世界！今天天气很好，我们去公园散步吧。机器学习和量化训练。"),
    ("japanese", "こんにちは、世界。カタカナとひらがな、そして漢字を混ぜた文章です。ｶﾀｶﾅ半角も。"),
    ("korean", "안녕하세요, 세계! 한국어 문장입니다."),
    ("arabic", "مرحبا بالعالم، كيف حالك اليوم؟ الذكاء الاصطناعي ١٢٣"),
    ("hindi", "नमस्ते दुनिया, आप कैसे हैं? मशीन लर्निंग।"),
    ("russian", "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю."),
    ("greek_hebrew_thai", "Καλημέρα κόσμε · שלום עולם · สวัสดีชาวโลก"),
    ("emoji_zwj", "Family 👨‍👩‍👧‍👦, couple 👩‍❤️‍👨, rainbow 🏳️‍🌈, skin tones 👍🏽👋🏿, keycap 1️⃣"),
    ("emoji_flags", "Flags: 🇯🇵🇺🇸🇩🇪🇧🇷🇮🇳 and 🏴󠁧󠁢󠁳󠁣󠁴󠁿"),
    ("emoji_run", "🙂🙃😀🎉🔥💯🤖🧠🚀✨"),
    ("cjk_ext_b", "𠀀𠀁𠀂 rare CJK (4-byte UTF-8) 𪚥"),
    ("code_tabs", "def f(x):\n\tif x > 0:\n\t\treturn x * 2  # double\n    return -x\n\nclass A:\n    pass\n"),
    ("code_rust", "fn main() {\n    let v: Vec<u32> = (0..10).map(|i| i * i).collect();\n    println!(\"{:?}\", v);\n}\n"),
    ("whitespace_runs", "a   b\t\t c\n\n\n  d  \r\n e     \n\n \t \n"),
    ("leading_trailing_spaces", "   leading and trailing   "),
    ("newlines_only", "\n\n\n\n"),
    ("numbers", "3.14159 1234567890 -42 1e-9 0x1F 2025-01-01 12:30:45 ¥1,000 ½ ²"),
    ("contractions", "I'm sure you're right, he'll see they've gone; we'd say it's OK. DON'T SHOUT'S"),
    ("special_tokens_inline", "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\nhello<|im_end|><|endoftext|>"),
    ("think_tags", "<think>\nLet me reason step by step.\n</think>\n\nThe answer is 42."),
    ("partial_special", "<|im_start <|im_end| <im_start|> |> <| <tool_call>{\"a\": 1}</tool_call>"),
    ("control_chars", "tab\tvt\u000bff\u000cnul\u0000bell\u0007 del\u007f end"),
    ("punctuation_mix", "...!!!???---___***###@@@$$$%%%^^^&&&((()))[[[]]]{{{}}}<<<>>>|||~~~```"),
    ("url_email", "See https://example.com/a/b?c=1&d=%20x#frag or mail me@example.org."),
    ("mixed_paragraph", "Qwen3 はAI模型 — это модель; نموذج 🤖 और मॉडल: 4-bit NVFP4 (E2M1 × E4M3)."),
    ("long_word_repeat", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    # Decomposed "é" (e + U+0301): the tokenizer's NFC normalizer composes it, so
    # decode(encode(x)) is the NFC form, not x. Pins that behaviour.
    ("nfd_input_is_normalized", "Cafe\u0301 and nai\u0308ve"),
]

SYSTEM = "You are a helpful assistant."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city. Use °C.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. \"東京\""},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
                    "threshold": {"type": "number", "default": 0.5, "examples": [1e-7, 2.0, 1e21, -0.0]},
                    "verbose": {"type": "boolean", "default": False, "nullable": None},
                },
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "description": "tab\there\nnewline <b>&</b> 'q' \\ \u0001"}},
]

CHATS = [
    ("user_only", [{"role": "user", "content": "Hello! 👋 What is NVFP4?"}], None, True),
    ("user_only_no_generation_prompt", [{"role": "user", "content": "Hi"}], None, False),
    (
        "system_user",
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Translate 'cat' into Chinese."}],
        None,
        True,
    ),
    (
        "multi_turn",
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "2+2 = 4."},
            {"role": "user", "content": "And times 3?\nShow the steps."},
        ],
        None,
        True,
    ),
    (
        "assistant_think",
        [
            {"role": "user", "content": "Is 97 prime?"},
            {"role": "assistant", "content": "<think>\nCheck divisors up to 9: 2, 3, 5, 7. None divide 97.\n</think>\n\nYes, 97 is prime."},
        ],
        None,
        False,
    ),
    (
        "assistant_think_then_user",
        [
            {"role": "user", "content": "Is 97 prime?"},
            {"role": "assistant", "content": "<think>\nTry 2, 3, 5, 7.\n</think>\n\nYes."},
            {"role": "user", "content": "And 91?"},
        ],
        None,
        True,
    ),
    (
        "training_conversation",
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "Of Japan? 日本"},
            {"role": "assistant", "content": "Tokyo (東京). 🗼"},
        ],
        None,
        False,
    ),
    (
        "system_not_first",
        [
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Explain {{ jinja }} and {% tags %} literally."},
        ],
        None,
        True,
    ),
    ("unicode_and_whitespace", [{"role": "user", "content": "  spaces \t tabs\n\nПривет — مرحبا — नमस्ते 👨‍👩‍👧  "}], None, True),
    ("tools_user", [{"role": "user", "content": "Weather in Tokyo?"}], TOOLS, True),
    ("tools_system_user", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Weather in Paris?"}], TOOLS, True),
    (
        "tool_responses",
        [
            {"role": "user", "content": "Weather in Tokyo and Paris?"},
            {
                "role": "assistant",
                "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo"}}\n</tool_call>\n'
                '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            },
            {"role": "tool", "content": '{"temp_c": 21}'},
            {"role": "tool", "content": '{"temp_c": 14}'},
            {"role": "assistant", "content": "Tokyo 21 °C, Paris 14 °C."},
            {"role": "user", "content": "Thanks"},
        ],
        TOOLS,
        True,
    ),
]


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers overrides jinja2's tojson (which HTML-escapes) with plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def transformers_env():
    """The environment transformers.utils.chat_template_utils._compile_jinja_template builds
    (minus its AssistantTracker `{% generation %}` extension, which Qwen3 does not use)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def special_tokens_map(cfg):
    """What transformers passes as **special_tokens_map: only the tokens that are set."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None:
            out[key] = value
    if cfg.get("additional_special_tokens"):
        out["additional_special_tokens"] = cfg["additional_special_tokens"]
    return out


def refresh_assets(src: Path):
    ASSETS.mkdir(parents=True, exist_ok=True)
    raw = (src / "tokenizer.json").read_bytes()
    with open(ASSETS / "tokenizer.json.gz", "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=f, mtime=0) as gz:
            gz.write(raw)
    for name in ("tokenizer_config.json", "config.json", "generation_config.json"):
        shutil.copyfile(src / name, ASSETS / name)
    print(f"refreshed {ASSETS} from {src}")


def cross_check_transformers(chats, cases):
    """Optional: the same answers from transformers itself, when it is installed."""
    try:
        import tempfile

        from transformers import AutoTokenizer
    except ImportError:
        print("transformers not installed: skipped the cross-check against apply_chat_template")
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_bytes(gzip.decompress((ASSETS / "tokenizer.json.gz").read_bytes()))
        shutil.copyfile(ASSETS / "tokenizer_config.json", Path(tmp) / "tokenizer_config.json")
        hf = AutoTokenizer.from_pretrained(tmp)
    for chat in chats:
        tools = None if chat["tools_json"] is None else json.loads(chat["tools_json"])
        want = hf.apply_chat_template(
            chat["messages"], tools=tools, tokenize=False, add_generation_prompt=chat["add_generation_prompt"]
        )
        assert want == chat["rendered"], f"chat {chat['name']}: jinja2 and transformers differ"
    for case in cases:
        assert hf.encode(case["text"], add_special_tokens=True) == case["ids"], f"text {case['name']}"
    print(f"cross-checked {len(chats)} chats and {len(cases)} texts against transformers")


def write_json(path: Path, value):
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refresh-assets", type=Path, help="copy tokenizer/config files from this dir first")
    args = ap.parse_args()
    if args.refresh_assets:
        refresh_assets(args.refresh_assets)

    tokenizer_json = gzip.decompress((ASSETS / "tokenizer.json.gz").read_bytes())
    tok = tokenizers.Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    cfg = json.loads((ASSETS / "tokenizer_config.json").read_text(encoding="utf-8"))
    source = {
        "tokenizers_version": tokenizers.__version__,
        "jinja2_version": jinja2.__version__,
        "tokenizer_json_sha256": hashlib.sha256(tokenizer_json).hexdigest(),
    }

    cases = []
    for name, text in TEXTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        assert ids == tok.encode(text, add_special_tokens=False).ids, "Qwen3 adds no BOS/EOS"
        cases.append({
            "name": name,
            "text": text,
            "ids": ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    write_json(FIXTURES / "reference_ids.json", {"source": source, "cases": cases})

    template = transformers_env().from_string(cfg["chat_template"])
    chats = []
    for name, messages, tools, add_generation_prompt in CHATS:
        rendered = template.render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **special_tokens_map(cfg),
        )
        chats.append({
            "name": name,
            "messages": messages,
            # A string, so the Rust side sees the keys in this exact order.
            "tools_json": None if tools is None else json.dumps(tools, ensure_ascii=False),
            "add_generation_prompt": add_generation_prompt,
            "rendered": rendered,
            "ids": tok.encode(rendered, add_special_tokens=True).ids,
        })
    cross_check_transformers(chats, cases)
    write_json(FIXTURES / "chat_templates.json", {"source": source, "cases": chats})


if __name__ == "__main__":
    main()
