"""The choices the model's layers are built with, torch-free: the method and training
configs validate against these names without importing torch, and the layers that
implement them (:mod:`e2vpt.layers.prompts`, :mod:`e2vpt.layers.kv_attention`, the head
in :mod:`e2vpt.model`) import them from here."""

from __future__ import annotations

# which mask segment each prompt dimension belongs to: interleaved (dimension j →
# segment j mod R, the official E²VPT code) | contiguous (R blocks of almost equal width)
SEGMENT_LAYOUTS = ("interleaved", "contiguous")
# pruned prompt tokens: removed from every layer's sequence | kept as zero vectors
PRUNE_MODES = ("remove", "zero")
# heads: Kaiming-uniform on the (heads, m, head_dim) tensor, fan-in m·head_dim, bound
# √(6/(m·head_dim)) (the official E²VPT code); width: on the (m, d) view, bound √(6/d)
KV_INITS = ("heads", "width")
# kaiming: the official VPT/E²VPT head (kaiming_normal_ fan-out, std √(2/C); bias
# −log 99, a 1 % prior); trunc-normal: timm's (std 0.02, bias 0)
HEAD_INITS = ("kaiming", "trunc-normal")

# The largest sizes a config may ask for — and so a run folder's files, which are
# checked before any tensor is made: far above every published recipe, far below what a
# machine fails to allocate (a hand-edited 10⁹ is an error naming the field, not an
# allocator's "tried to allocate 768000000000000 bytes").
MAX_PROMPT_TOKENS = 4096  # visual or key-value prompt tokens per set (the papers: ≤ 200)
MAX_LAYER_WIDTH = 4096  # a width a method sets: LoRA rank, side-network channels, mask
#                         segments (ViT-G/14 is 1664 wide; segments are also ≤ the width)
MAX_ADDED_LAYERS = 64  # layers a method adds: MLP-head layers, side-network convolutions
MAX_CLASSES = 100_000  # a head's classes (ImageNet-21k has 21,843)
