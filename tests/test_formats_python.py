"""apr's formats against the Python `gguf` package (the reference for GGUF and ggml quants).

- Dequantizing every tensor of the real model (apr rosetta convert GGUF -> F32 SafeTensors) must
  equal `gguf.quants.dequantize`.
- apr's quantizers must produce the same bytes as `gguf.quants.quantize` for every type that
  package implements.
- GGUF files apr writes must load in `gguf.GGUFReader` with identical tensors.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

ROOT = Path(__file__).resolve().parent.parent


def apr_bin():
    path = os.environ.get("APR_BIN") or str(ROOT / "target" / "release" / "apr")
    if not Path(path).exists():
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "apr-cli"],
                       cwd=ROOT, check=True)
    return path


def apr(*args):
    done = subprocess.run([apr_bin(), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"apr {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def real_model():
    return Path(subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_model.py")],
                               check=True, capture_output=True, text=True).stdout.strip())


def read_safetensors(path):
    """name -> float32 array, with numpy only."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    n = struct.unpack("<Q", bytes(raw[:8]))[0]
    header = json.loads(bytes(raw[8:8 + n]))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = raw[8 + n + a:8 + n + b].view(np.float32).reshape(info["shape"])
    return out


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        blobs.append(arr.tobytes())
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


HF = {  # the GGUF name of each HF name the tests use
    "model.layers.0.self_attn.q_proj.weight": "blk.0.attn_q.weight",
    "model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight",
}


class DequantizeMatchesGgufPy(unittest.TestCase):
    def test_issue_3_every_real_tensor_dequantizes_like_gguf_py(self):
        model = real_model()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "f32.safetensors"
            apr("rosetta", "convert", model, out)
            ours = read_safetensors(out)
            reader = gguf.GGUFReader(model)
            by_gguf = {}
            for t in reader.tensors:
                by_gguf[t.name] = t
            self.assertEqual(len(reader.tensors), 291)
            self.assertEqual(len(ours), 291)
            worst = {}
            for hf_name, values in ours.items():
                # apr writes HF names; map back through the GGUF reader's names.
                name = hf_to_gguf(hf_name)
                t = by_gguf[name]
                ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
                ref = ref.reshape(values.shape)
                diff = float(np.max(np.abs(ref - values))) if ref.size else 0.0
                scale = float(np.max(np.abs(ref))) or 1.0
                kind = t.tensor_type.name
                worst[kind] = max(worst.get(kind, 0.0), diff)
                # 0, or f32 rounding where numpy groups the multiplications differently.
                self.assertLessEqual(diff, scale * 2.0 ** -22, f"{name} ({kind})")
            print("\nmax |apr - gguf.quants.dequantize| per type:",
                  ", ".join(f"{k} {v:.3g}" for k, v in sorted(worst.items())), file=sys.stderr)


class DequantizeRandomBlocks(unittest.TestCase):
    """Every type apr decodes, on random blocks (the real model has only five of them)."""

    TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
             Q.F16, Q.BF16]

    def test_issue_3_random_blocks_of_every_type_dequantize_like_gguf_py(self):
        rng = np.random.default_rng(33)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "blocks.gguf"
            w = gguf.GGUFWriter(src, "qwen2")
            expected = {}
            for qtype in self.TYPES:
                block, size = gguf.GGML_QUANT_SIZES[qtype]
                rows, cols = 4, 512
                raw = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
                if qtype not in (Q.F16, Q.BF16):
                    # Keep the f16 scales finite and modest: random bits would make NaN and Inf.
                    blocks = raw.reshape(-1, size)
                    for offset in scale_offsets(qtype, size):
                        scale = rng.uniform(-0.01, 0.01, size=blocks.shape[0]).astype(np.float16)
                        blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(-1, 2)
                else:
                    values = rng.standard_normal((rows, cols)).astype(np.float32)
                    raw = gguf.quants.quantize(values, qtype).view(np.uint8).reshape(rows, -1)
                name = f"t.{qtype.name}"
                w.add_tensor(name, raw, raw_dtype=qtype)
                expected[name] = gguf.quants.dequantize(raw, qtype).reshape(rows, cols).astype(np.float32)
            w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
            out = Path(tmp) / "f32.safetensors"
            apr("convert", src, out, "--dtype", "f32")
            ours = read_safetensors(out)
            for name, ref in expected.items():
                self.assertTrue(np.array_equal(ours[name].view(np.uint32), ref.view(np.uint32))
                                or float(np.max(np.abs(ours[name] - ref))) <= float(np.max(np.abs(ref))) * 2.0 ** -22,
                                f"{name}: max diff {np.max(np.abs(ours[name] - ref))}")


def scale_offsets(qtype, size):
    """Byte offsets of the f16 scale fields in one block."""
    return {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
            Q.Q2_K: [size - 4, size - 2], Q.Q3_K: [size - 2], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2],
            Q.Q6_K: [size - 2]}[qtype]


def hf_to_gguf(name):
    table = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if name in table:
        return table[name]
    block = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.weight": "attn_output.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[0] == "model" and parts[1] == "layers" and parts[3] in block:
        return f"blk.{parts[2]}.{block[parts[3]]}"
    return name


def edge_rows(rng):
    """Rows that exercise ties, zeros, signs and scale extremes, 256 values each."""
    rows = [
        np.zeros(256),
        np.full(256, -3.0),
        np.linspace(-1, 1, 256),
        np.where(np.arange(256) % 2 == 0, 1.0, -1.0),
        rng.standard_normal(256) * 1e-4,
        rng.standard_normal(256) * 1e4,
        np.round(rng.standard_normal(256) * 8) / 8,  # exact halves hit rounding ties
    ]
    rows.append(-rows[2])
    return np.stack(rows).astype(np.float32)


class QuantizeMatchesGgufPy(unittest.TestCase):
    TYPES = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1,
             "f16": Q.F16, "bf16": Q.BF16}

    def test_issue_3_quantizers_produce_gguf_py_bytes(self):
        rng = np.random.default_rng(3)
        real = read_real_subset()
        tensors = {
            "model.layers.0.self_attn.q_proj.weight": real["blk.0.attn_q.weight"][:64],
            "model.layers.0.mlp.down_proj.weight": real["blk.0.ffn_down.weight"][:32],
            "model.layers.1.self_attn.q_proj.weight": edge_rows(rng),
            "model.layers.1.mlp.up_proj.weight": rng.standard_normal((16, 512)).astype(np.float32),
        }
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.safetensors"
            write_safetensors(src, tensors)
            for flag, qtype in self.TYPES.items():
                out = Path(tmp) / f"{flag}.gguf"
                apr("convert", src, out, "--quantize", flag)
                reader = gguf.GGUFReader(out)
                got = {t.name: t for t in reader.tensors}
                for hf_name, values in tensors.items():
                    t = got[hf_to_gguf(hf_name)]
                    self.assertEqual(t.tensor_type, qtype, f"{flag} {t.name}")
                    want = gguf.quants.quantize(values, qtype)
                    self.assertEqual(bytes(np.asarray(t.data).view(np.uint8).ravel()),
                                     bytes(want.view(np.uint8).ravel()), f"{flag} {t.name}")


_REAL = {}


def read_real_subset():
    if not _REAL:
        reader = gguf.GGUFReader(real_model())
        for t in reader.tensors:
            if t.name in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight"):
                shape = tuple(reversed([int(d) for d in t.shape]))
                _REAL[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    return _REAL


class WrittenGgufLoadsInGgufPy(unittest.TestCase):
    def test_issue_3_gguf_apr_gguf_keeps_every_tensor_byte(self):
        model = real_model()
        with tempfile.TemporaryDirectory() as tmp:
            apr_path, back = Path(tmp) / "m.apr", Path(tmp) / "back.gguf"
            apr("rosetta", "convert", model, apr_path, "--compression", "zstd")
            apr("rosetta", "convert", apr_path, back)
            a, b = gguf.GGUFReader(model), gguf.GGUFReader(back)
            self.assertEqual([t.name for t in a.tensors], [t.name for t in b.tensors])
            for x, y in zip(a.tensors, b.tensors):
                self.assertEqual(x.tensor_type, y.tensor_type, x.name)
                self.assertEqual(list(x.shape), list(y.shape), x.name)
                self.assertTrue(np.array_equal(np.asarray(x.data).view(np.uint8),
                                               np.asarray(y.data).view(np.uint8)), x.name)
            keys_a = {k: f.types for k, f in a.fields.items() if not k.startswith("GGUF.")}
            keys_b = {k: f.types for k, f in b.fields.items() if not k.startswith("GGUF.")}
            self.assertEqual(keys_a, keys_b)
            for key in keys_a:
                self.assertEqual(field_value(a.fields[key]), field_value(b.fields[key]), key)


def field_value(field):
    return [bytes(field.parts[i]) for i in field.data]


if __name__ == "__main__":
    unittest.main()
