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
