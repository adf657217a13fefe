#!/usr/bin/env python3
"""Tiny random-weight sentence encoders of the BERT and XLM-RoBERTa families, with reference
embeddings computed here in numpy, independently of the Rust forward pass.

    python tools/tiny_encoders.py OUT_DIR

writes OUT_DIR/{bert-cls,bert-max,xlmr-mean}/ (config.json, tokenizer.json, model.safetensors,
1_Pooling/config.json) and OUT_DIR/<model>/reference.json: texts, the token ids this script's own
tokenizer gives them (WordPiece for BERT, Unigram/Viterbi over a Metaspace split for XLM-R) and
their L2-normalised sentence embeddings. tests/encoders.rs loads each folder with switchboard and
compares ids and embeddings. The shapes are tiny so a test builds, loads and runs them in
milliseconds; the forward pass is the same code whatever the size.
"""
import json
import math
import os
import re
import struct
import sys
import unicodedata

import numpy as np

HIDDEN, HEADS, INTER, LAYERS, POSITIONS = 32, 4, 64, 2, 40

BERT_TEXTS = [
    "What is the capital of France?",
    "write a python function that sorts a list",
    "Hello, world! 42 is the answer.",
    "the cat sat on the mat",
]
XLMR_TEXTS = [
    "What is the capital of France?",
    "¿Cuál es la capital de Francia?",
    "Какая столица Франции?",
    "法国的首都是哪里？",
    "the cat sat on the mat",
]


# ---------------------------------------------------------------- tokenizers

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_WORDS = ["the", "what", "is", "capital", "of", "france", "write", "python", "function",
              "that", "sort", "list", "hello", "world", "answer", "cat", "on", "mat", "##s",
              "##ing", "##at"]


def bert_vocab():
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list("?!,.'")
    vocab = BERT_SPECIALS + chars + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return vocab + [w for w in BERT_WORDS if w not in vocab]


def is_punct(c):
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def bert_tokenize(text, vocab):
    """BertNormalizer (lowercase, accents stripped) + BertPreTokenizer + greedy WordPiece."""
    index = {t: i for i, t in enumerate(vocab)}
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words, cur = [], ""
    for c in text:
        if c.isspace():
            words, cur = words + ([cur] if cur else []), ""
        elif is_punct(c):
            words, cur = words + ([cur] if cur else []) + [c], ""
        else:
            cur += c
    words += [cur] if cur else []
    ids = [index["[CLS]"]]
    for w in words:
        pieces, start = [], 0
        while start < len(w):
            end = len(w)
            while end > start:
                piece = ("##" if start else "") + w[start:end]
                if piece in index:
                    break
                end -= 1
            if end == start:
                pieces = [index["[UNK]"]]
                break
            pieces.append(index[("##" if start else "") + w[start:end]])
            start = end
        ids += pieces
    return ids + [index["[SEP]"]]


def added_tokens(specials):
    """The special tokens as tokenizer.json lists them (ids from 0, in order)."""
    return [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for i, t in enumerate(specials)]


def bert_tokenizer_json(vocab):
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added_tokens(BERT_SPECIALS),
        "normalizer": {"type": "BertNormalizer", "clean_text": True,
                       "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {t: i for i, t in enumerate(vocab)}},
    }


XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
SPACE = "\u2581"


def xlmr_vocab(rng):
    """(piece, log-probability) pairs: every character of the texts, alone and after the word
    marker, plus some whole words, with distinct scores so Viterbi has no ties."""
    chars = sorted(set("".join(XLMR_TEXTS).replace(" ", "")))
    words = ["the", "capital", "what", "is", "of", "la", "es", "capit", "Франции", "столица",
             "法国", "首都", "cat", "at", "Fran"]
    pieces = [SPACE] + chars + [SPACE + c for c in chars] + [SPACE + w for w in words] + words
    seen, out = set(), []
    for p in pieces:
        if p not in seen:
            seen.add(p)
            out.append(p)
    scores = -rng.uniform(1.0, 12.0, size=len(out)) - np.array([0.0 if len(p) > 2 else 3.0
                                                              for p in out])
    return [(t, 0.0) for t in XLMR_SPECIALS] + list(zip(out, scores.tolist()))


def xlmr_tokenize(text, vocab):
    """NFKC, Metaspace (spaces → ▁, one prepended, split before each ▁), Viterbi per word."""
    index = {t: i for i, (t, _) in enumerate(vocab)}
    score = {t: s for t, s in vocab[len(XLMR_SPECIALS):]}
    text = re.sub(" {2,}", " ", unicodedata.normalize("NFKC", text))
    text = SPACE + text.replace(" ", SPACE)
    words = [w for w in re.split("(?=" + SPACE + ")", text) if w]
    ids = [index["<s>"]]
    for w in words:
        best = [(-math.inf, None)] * (len(w) + 1)
        best[0] = (0.0, None)
        for end in range(1, len(w) + 1):
            for start in range(end):
                piece = w[start:end]
                if piece in score and best[start][0] > -math.inf:
                    s = best[start][0] + score[piece]
                    if s > best[end][0]:
                        best[end] = (s, start)
        if best[-1][0] == -math.inf:
            raise ValueError(f"no segmentation for {w!r}: extend the vocabulary")
        pieces, end = [], len(w)
        while end > 0:
            start = best[end][1]
            pieces.append(index[w[start:end]])
            end = start
        ids += pieces[::-1]
    return ids + [index["</s>"]]


def xlmr_tokenizer_json(vocab):
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added_tokens(XLMR_SPECIALS),
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFKC"},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": SPACE,
                          "prepend_scheme": "always", "split": True},
        "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                           "trim_offsets": True, "add_prefix_space": True},
        "decoder": {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "always",
                    "split": True},
        "model": {"type": "Unigram", "unk_id": 3, "vocab": [[t, s] for t, s in vocab],
                  "byte_fallback": False},
    }


# ---------------------------------------------------------------- weights and forward pass

def random_weights(rng, vocab_size, positions, type_vocab):
    w = {}

    def dense(name, i, o):
        w[name + ".weight"] = rng.normal(0, 0.2, (o, i)).astype(np.float32)
        w[name + ".bias"] = rng.normal(0, 0.05, o).astype(np.float32)

    def norm(name):
        w[name + ".weight"] = (1 + rng.normal(0, 0.1, HIDDEN)).astype(np.float32)
        w[name + ".bias"] = rng.normal(0, 0.1, HIDDEN).astype(np.float32)

    w["embeddings.word_embeddings.weight"] = rng.normal(0, 1, (vocab_size, HIDDEN)).astype(np.float32)
    w["embeddings.position_embeddings.weight"] = rng.normal(0, 1, (positions, HIDDEN)).astype(np.float32)
    w["embeddings.token_type_embeddings.weight"] = rng.normal(0, 1, (type_vocab, HIDDEN)).astype(np.float32)
    norm("embeddings.LayerNorm")
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            dense(p + "attention.self." + n, HIDDEN, HIDDEN)
        dense(p + "attention.output.dense", HIDDEN, HIDDEN)
        norm(p + "attention.output.LayerNorm")
        dense(p + "intermediate.dense", HIDDEN, INTER)
        dense(p + "output.dense", INTER, HIDDEN)
        norm(p + "output.LayerNorm")
    dense("pooler.dense", HIDDEN, HIDDEN)
    return w


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def forward(w, ids, offset, eps, pooling):
    """One unpadded sequence through the encoder; returns the pooled, normalised vector."""
    x = w["embeddings.word_embeddings.weight"][ids].astype(np.float64)
    x = x + w["embeddings.position_embeddings.weight"][offset:offset + len(ids)]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    lin = lambda t, n: t @ w[n + ".weight"].T + w[n + ".bias"]
    d = HIDDEN // HEADS
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        split = lambda t: t.reshape(len(ids), HEADS, d).transpose(1, 0, 2)
        q, k, v = (split(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(1, 0, 2).reshape(len(ids), HIDDEN)
        x = layer_norm(lin(ctx, p + "attention.output.dense") + x,
                       w[p + "attention.output.LayerNorm.weight"],
                       w[p + "attention.output.LayerNorm.bias"], eps)
        h = gelu(lin(x, p + "intermediate.dense"))
        x = layer_norm(lin(h, p + "output.dense") + x, w[p + "output.LayerNorm.weight"],
                       w[p + "output.LayerNorm.bias"], eps)
    v = {"cls": x[0], "mean": x.mean(0), "max": x.max(0)}[pooling]
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------- files

def save_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def write_model(out, name, config, tokenizer, weights, pooling, texts, ids, prefix=""):
    d = os.path.join(out, name)
    os.makedirs(os.path.join(d, "1_Pooling"), exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    with open(os.path.join(d, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": HIDDEN,
                   "pooling_mode_cls_token": pooling == "cls",
                   "pooling_mode_mean_tokens": pooling == "mean",
                   "pooling_mode_max_tokens": pooling == "max"}, f)
    save_safetensors(os.path.join(d, "model.safetensors"),
                     {prefix + k: v for k, v in weights.items()})
    offset = config["pad_token_id"] + 1 if config["model_type"] == "xlm-roberta" else 0
    eps = config["layer_norm_eps"]
    embeddings = [forward(weights, s, offset, eps, pooling).tolist() for s in ids]
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"texts": texts, "ids": ids, "embeddings": embeddings}, f, ensure_ascii=False)


def main(out):
    rng = np.random.default_rng(20261206)
    vocab = bert_vocab()
    bert_cfg = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(vocab),
                "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                "num_attention_heads": HEADS, "intermediate_size": INTER,
                "max_position_embeddings": POSITIONS, "type_vocab_size": 2,
                "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0,
                "position_embedding_type": "absolute"}
    w = random_weights(rng, len(vocab), POSITIONS, 2)
    ids = [bert_tokenize(t, vocab) for t in BERT_TEXTS]
    tok = bert_tokenizer_json(vocab)
    for pooling in ("cls", "max"):
        write_model(out, f"bert-{pooling}", bert_cfg, tok, w, pooling, BERT_TEXTS, ids)
    xvocab = xlmr_vocab(rng)
    xlmr_cfg = {"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"],
                "vocab_size": len(xvocab), "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                "num_attention_heads": HEADS, "intermediate_size": INTER,
                "max_position_embeddings": POSITIONS + 2, "type_vocab_size": 1,
                "layer_norm_eps": 1e-5, "hidden_act": "gelu", "pad_token_id": 1,
                "bos_token_id": 0, "eos_token_id": 2, "position_embedding_type": "absolute"}
    xw = random_weights(rng, len(xvocab), POSITIONS + 2, 1)
    xids = [xlmr_tokenize(t, xvocab) for t in XLMR_TEXTS]
    write_model(out, "xlmr-mean", xlmr_cfg, xlmr_tokenizer_json(xvocab), xw, "mean",
                XLMR_TEXTS, xids, prefix="roberta.")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_encoders.py OUT_DIR")
    main(sys.argv[1])
