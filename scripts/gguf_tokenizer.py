#!/usr/bin/env python3
"""Write a Hugging Face tokenizer.json from the tokenizer stored in a GGUF model file.

Usage: gguf_tokenizer.py MODEL.gguf OUT.json

Only byte-level BPE vocabularies (GGUF `tokenizer.ggml.model = "gpt2"`, e.g. SmolLM2, Qwen,
Llama 3) are supported: the GGUF file keeps the vocabulary and the merges in the byte-level
alphabet that tokenizer.json uses, so the conversion is a change of container. The
pre-tokenizer follows the GGUF `tokenizer.ggml.pre` name (individual digits for "smollm").

Used by `scripts/services install` to give the tests a real model's tokenizer (SmolLM2-135M,
Apache-2.0) without downloading anything beyond the PyPI wheel that ships the model; the
tests check its token ids against the llama.cpp server's own tokenizer.
"""
import json
import struct
import sys

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.data, self.at)[0]
        self.at += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.data[self.at:self.at + n].decode("utf-8", errors="surrogateescape")
        self.at += n
        return s

    def value(self, t):
        if t in SCALAR:
            return self.take(SCALAR[t])
        if t == STR:
            return self.string()
        if t == ARR:
            inner, count = self.take("<I"), self.take("<Q")
            return [self.value(inner) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {t}")


def metadata(path):
    with open(path, "rb") as f:
        data = f.read()
    r = Reader(data)
    if data[:4] != b"GGUF":
        raise SystemExit(f"{path}: not a GGUF file")
    r.at = 4
    version = r.take("<I")
    if version < 2:
        raise SystemExit(f"{path}: GGUF version {version} is not supported")
    r.take("<Q")  # tensor count
    kv = {}
    for _ in range(r.take("<Q")):
        key = r.string()
        kv[key] = r.value(r.take("<I"))
    return kv


GPT2_REGEX = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


def pre_tokenizer(pre):
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    if pre in ("smollm", "gpt-2", "gpt2", "default", None):
        steps = [byte_level]
        if pre == "smollm":
            steps.insert(0, {"type": "Digits", "individual_digits": True})
        return {"type": "Sequence", "pretokenizers": steps}
    raise SystemExit(f"pre-tokenizer {pre!r} is not supported by this converter")


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = sys.argv[1:]
    kv = metadata(src)
    model = kv.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"{src}: tokenizer.ggml.model = {model!r}; only byte-level BPE (gpt2) is supported")
    tokens = kv["tokenizer.ggml.tokens"]
    types = kv.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = kv["tokenizer.ggml.merges"]
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3  # CONTROL
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer(kv.get("tokenizer.ggml.pre")),
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": merges,
        },
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    print(f"{out}: {len(tokens)} tokens, {len(merges)} merges, {len(added)} special")


if __name__ == "__main__":
    main()
