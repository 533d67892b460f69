"""A tiny LLaMA-style tokenizer for tests and the demo (no download).

`train_tiny_tokenizer` trains a SentencePiece BPE model with LLaMA's settings (byte fallback,
split digits, dummy prefix, identity normalization, unk=0 / bos=1 / eos=2, no pad piece) and
writes a Hugging Face tokenizer directory that `AutoTokenizer.from_pretrained(dir)` loads as
`LlamaTokenizer`: adds BOS, no EOS, pad = `<unk>` (id 0, as LLaVA sets it), right padding.

`legacy` selects the LLaMA tokenizer's two behaviours around special tokens (the difference
behind LLaVA's off-by-one label masks with non-legacy tokenizers):
legacy=True puts SentencePiece's dummy-prefix "▁" on text that follows a special token
(`</s>USER` -> `</s> ▁US ER`), legacy=False does not (`</s> US ER`). In transformers 5 the flag
is read from tokenizer_config.json and turned into the Metaspace prepend scheme ("always" /
"first"); `save_pretrained` does not write it back, so this function writes the config itself
and the directory holds `tokenizer.model` (converted on load) rather than a `tokenizer.json`.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from mmln.base.io import write_bytes, write_text

SPECIAL = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_tiny_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000, legacy: bool = True
) -> Path:
    """Train a LLaMA-style SentencePiece BPE on `texts`; save a HF tokenizer dir; return it.

    `vocab_size` is an upper bound (the corpus may support fewer pieces); byte fallback adds 256
    byte pieces, so anything below ~300 is rejected by SentencePiece.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        # newlines left to byte fallback (<0x0A>), as in LLaMA's vocabulary
        sentence_iterator=iter([t.replace("\n", " ") for t in texts if t.strip()]),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    write_bytes(out / "tokenizer.model", model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": legacy,
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": True,
        **SPECIAL,
        "pad_token": "<unk>",
        "model_max_length": 2048,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    write_text(out / "special_tokens_map.json", json.dumps({**SPECIAL, "pad_token": "<unk>"}, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------ chat models
# Qwen3's chat template, as shipped in Qwen/Qwen3-8B's tokenizer_config.json (Jinja whitespace
# control makes the line layout irrelevant; the text of every branch is the original's).
QWEN3_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0].role == 'system' %}"
    "{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- else %}{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and "
    "not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}"
    "{%- endif %}"
    "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == \"assistant\" %}{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' "
    "+ content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and content) or (not loop.first) %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}"
    "{%- endif %}{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == \"tool\" %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)

# Chat-template families, each with its model's real Jinja template (as shipped in the
# model's tokenizer_config.json) and its special tokens: (template, bos, eos, extra specials).
CHAT_FAMILIES: dict[str, tuple[str, str | None, str, tuple[str, ...]]] = {
    # Meta-Llama-3-8B-Instruct: header blocks, end of turn <|eot_id|>
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
        "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
        "<|begin_of_text|>", "<|end_of_text|>", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # Qwen2-7B-Instruct: ChatML with a default system turn, end of turn <|im_end|>, no BOS
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>"),
    ),
    # Mistral-7B-Instruct-v0.1: [INST] blocks, the answer ends with EOS; refuses non-alternating roles
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
        "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
        "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
        "roles are supported!') }}{% endif %}{% endfor %}",
        "<s>", "</s>", ("[INST]", "[/INST]"),
    ),
    # Qwen3-8B: ChatML; the LAST assistant turn after the last user query is rendered with a
    # (here empty) <think> block, earlier ones without: a render that depends on later turns
    "qwen3": (QWEN3_TEMPLATE, None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>")),
}
# tokens a family adds as plain (not special) added tokens, as its tokenizer.json does
ADDED_TOKENS = {"qwen3": ("<think>", "</think>")}
# families whose real tokenizer adds BOS itself (Llama-3's tokenizer.json post-processor, Mistral's add_bos_token)
ADDS_BOS = ("llama3", "mistral")


# the pre-tokenization regex of Llama-3 (and, with single digits, Qwen2): newline runs are one piece
PIECES_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_tiny_chat_tokenizer(texts: Iterable[str], out_dir: str | Path, family: str) -> Path:
    """A word-level tokenizer of a chat-model family with its real chat template and special tokens.

    Every piece of `texts` is one token (llama3 / chatml: byte-level pieces of the Llama-3
    regex, "Ġword", "ĊĊ" for a blank line; mistral: SentencePiece-style "▁word") and
    every special token of the family is one id, so tests can state expected tokens by hand.
    Saved with `save_pretrained`; `AutoTokenizer.from_pretrained(dir)` loads it with
    `chat_template` set. The template writes BOS itself where the family has one, and, as the
    real tokenizers do, llama3 (tokenizer.json's post-processor) and mistral (add_bos_token)
    ALSO add BOS when text is tokenized with special tokens (`ADDS_BOS`): a rendered prompt
    tokenized with the defaults gets two, which is what consumers of an export must not do.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    template, bos, eos, extra = CHAT_FAMILIES[family]
    specials = ["<unk>", *([bos] if bos else []), eos, *extra]
    if family == "mistral":  # SentencePiece-style: "▁" marks a space, prefixed to the text's start
        pre = pre_tokenizers.Metaspace(prepend_scheme="first")
        decoder = decoders.Metaspace(prepend_scheme="first")
    else:  # tiktoken-style byte-level pieces split by the Llama-3 / Qwen2 regex
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PIECES_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        decoder = decoders.ByteLevel()
    # the vocabulary: every piece of the texts and of the template's own words, also without its
    # space marker (a word right after a special token or a newline) and, for mistral, after "\n"
    pieces: dict[str, None] = {}
    spaces = [f"x{w}x" for w in (" ", "\n", "\n\n", "\n\n\n", " \n")] + [" ", "\n", "\n\n", "\n\n\n"]
    for text in [*texts, template, "system user assistant You are a helpful assistant.", *spaces]:
        for piece, _ in pre.pre_tokenize_str(text):
            bare = piece.lstrip("▁Ġ")
            pieces.update(dict.fromkeys([piece, bare, *(["\n" + bare, "▁\n" + bare] if family == "mistral" else [])]))
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *(p for p in pieces if p)]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre, decoder
    if family in ADDS_BOS:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                           special_tokens=[(bos, vocab[bos])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token=bos, eos_token=eos, pad_token=eos,
        additional_special_tokens=list(extra), model_max_length=2048, padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(list(ADDED_TOKENS.get(family, ())))
    fast.chat_template = template
    out = Path(out_dir)
    fast.save_pretrained(out)
    return out
