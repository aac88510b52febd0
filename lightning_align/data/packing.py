"""Pack tokenized documents into fixed-length blocks for causal-LM training."""
from __future__ import annotations

import torch


def pack_blocks(token_id_lists: list[list[int]], block_size: int, eos_id: int | None = None) -> torch.Tensor:
    """Concatenate documents (separated by `eos_id` when given) and cut into full `block_size` blocks.

    The tail shorter than a block is dropped so every block is a full context; an error is raised when the text
    does not fill a single block, since training on nothing must not pass silently.
    """
    stream: list[int] = []
    for ids in token_id_lists:
        stream.extend(ids)
        if eos_id is not None:
            stream.append(eos_id)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(f"{len(stream)} tokens do not fill one block of {block_size}")
    return torch.tensor(stream[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)
