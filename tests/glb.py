"""A tiny glTF binary (GLB) made in the test: a mouth-shaped disc with morph targets under the
names avatars use for the Oculus visemes (viseme_aa, viseme_PP, ...), for the page's GLB path."""
from __future__ import annotations

import json
import math
import struct

import numpy as np

MORPHS = ["viseme_sil", "viseme_PP", "viseme_FF", "viseme_TH", "viseme_DD", "viseme_kk", "viseme_CH",
          "viseme_SS", "viseme_nn", "viseme_RR", "viseme_aa", "viseme_E", "viseme_I", "viseme_O", "viseme_U"]


def mouth_glb(segments: int = 24) -> bytes:
    angles = np.arange(segments) * 2 * math.pi / segments
    ring = np.stack([np.cos(angles) * 0.5, np.sin(angles) * 0.1, np.zeros(segments)], axis=1)
    positions = np.vstack([[0.0, 0.0, 0.0], ring]).astype(np.float32)
    indices = np.array([[0, 1 + i, 1 + (i + 1) % segments] for i in range(segments)], dtype=np.uint16).reshape(-1)
    targets = []
    for k, _ in enumerate(MORPHS):  # each viseme opens (y) and widens (x) the disc its own way
        delta = np.zeros_like(positions)
        delta[:, 1] = positions[:, 1] * (k % 5)
        delta[:, 0] = positions[:, 0] * (0.1 * (k % 3))
        targets.append(delta.astype(np.float32))
    blobs = [positions.tobytes(), indices.tobytes() + b"\0" * (-len(indices.tobytes()) % 4)]
    blobs += [t.tobytes() for t in targets]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).tolist()
    views = [{"buffer": 0, "byteOffset": offsets[i], "byteLength": len(blobs[i])} for i in range(len(blobs))]
    low, high = positions.min(axis=0).tolist(), positions.max(axis=0).tolist()
    accessors = [{"bufferView": 0, "componentType": 5126, "count": len(positions), "type": "VEC3", "min": low, "max": high},
                 {"bufferView": 1, "componentType": 5123, "count": len(indices), "type": "SCALAR"}]
    for i, t in enumerate(targets):
        accessors.append({"bufferView": 2 + i, "componentType": 5126, "count": len(t), "type": "VEC3",
                          "min": t.min(axis=0).tolist(), "max": t.max(axis=0).tolist()})
    document = {
        "asset": {"version": "2.0", "generator": "tests/glb.py"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "mouth"}],
        "meshes": [{"name": "mouth", "extras": {"targetNames": MORPHS}, "weights": [0.0] * len(MORPHS),
                    "primitives": [{"attributes": {"POSITION": 0}, "indices": 1,
                                    "targets": [{"POSITION": 2 + i} for i in range(len(MORPHS))]}]}],
        "buffers": [{"byteLength": offsets[-1]}], "bufferViews": views, "accessors": accessors,
    }
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    binary = b"".join(blobs)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text + struct.pack("<II", len(binary), 0x004E4942) + binary
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks
