"""Choice of the program layout of one recurrence call (see README.md, "Selection rule").

Layouts:
  single      one program per batch tile owns all hidden units: h (forward) and the gate
              gradients (backward) stay in registers from one step to the next, no sync.
  persistent  the hidden units of a batch tile are split over several programs, all resident
              at once, one launch for the whole sequence, a grid barrier per step.
  stepwise    the same split, one launch per step: the kernel boundary is the barrier. The
              fallback when the grid is larger than the number of SMs, and the only split
              layout the interpreter can run (it runs programs one after another, so a grid
              barrier between two of them would wait forever).

Overrides for tests and tuning (read at every call):
  FUSED_RNN_TRITON_LAYOUT   auto | single | persistent | stepwise
  FUSED_RNN_TRITON_BLOCK_H  hidden units per program (power of two >= 16)
  FUSED_RNN_TRITON_WEIGHTS  auto | resident | streamed  (w_hh slice kept on chip or re-read)
  FUSED_RNN_TRITON_BLOCK_K  contraction slice of the streamed product (power of two >= 16)
  FUSED_RNN_TRITON_BLOCK_B  batch rows per program (power of two >= 16)
"""

from __future__ import annotations

import dataclasses
import os

import torch
import triton

from ._barrier import SYNC_GRID, SYNC_NONE, SYNC_PROGRAM

LAYOUTS = ("single", "persistent", "stepwise")

#: Bytes of w_hh one program may hold on chip (registers) for the whole sequence. One program
#: per SM runs in the split layouts, so this is a share of the 256 KiB register file.
RESIDENT_WEIGHT_BYTES = 128 * 1024
#: The single layout keeps the whole w_hh in one program: worth it (no barrier at all) only
#: while the per-step product stays small.
SINGLE_WEIGHT_BYTES = 64 * 1024
#: Batch rows per program: tl.dot needs >= 16; larger tiles share one weight slice among
#: more rows (fewer programs for the same work).
MIN_BLOCK_B, MAX_BLOCK_B = 16, 64
MIN_BLOCK = 16


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str                 # single | persistent | stepwise
    block_b: int              # batch rows per program
    block_h: int              # hidden units per program (per gate)
    h_pad: int                # contraction extent: H rounded up to a power of two
    block_k: int              # contraction slice of the streamed product (== h_pad if resident)
    weights_resident: bool    # w_hh slice loaded once before the step loop
    n_batch_tiles: int
    n_slices: int             # programs per batch tile
    num_warps: int

    @property
    def operand_in_registers(self) -> bool:
        """The recurrent operand never leaves the program: single layout, resident weights."""
        return self.name == "single" and self.weights_resident

    @property
    def sync(self) -> int:
        if self.operand_in_registers or self.name == "stepwise":
            return SYNC_NONE
        # A forced persistent layout keeps its grid barrier even with one program per batch
        # tile: the interpreter can run that one, which tests the barrier's code.
        return SYNC_GRID if self.name == "persistent" else SYNC_PROGRAM

    @property
    def grid(self) -> tuple[int, int]:
        return (self.n_batch_tiles, self.n_slices)

    @property
    def padded_batch(self) -> int:
        return self.n_batch_tiles * self.block_b


def _env_choice(name: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, "auto").strip().lower() or "auto"
    if value not in ("auto",) + choices:
        raise ValueError(f"{name}={value!r}: expected one of {('auto',) + choices}")
    return value


def _env_block(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    block = int(value)
    if block < MIN_BLOCK or block & (block - 1):
        raise ValueError(f"{name}={block}: expected a power of two >= {MIN_BLOCK}")
    return block


def _resident_programs(device: torch.device) -> int:
    """How many programs of a persistent launch are sure to be resident together: one per SM
    (the weight slices take most of an SM's registers, so no second one fits anyway)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _num_warps(weight_bytes: int, block_b: int, block_h: int) -> int:
    # Enough warps that the weight slice takes about 64 32-bit registers a thread.
    registers = max(weight_bytes // 4, block_b * block_h * 4)
    return max(4, min(8, triton.next_power_of_2(registers // (64 * 32))))


def choose_layout(gates: int, B: int, H: int, dtype: torch.dtype, device: torch.device) -> Layout:
    """Layout of one call: ``gates`` weight blocks of [H, H] (4 LSTM, 3 GRU, 1 RNN)."""
    element = torch.empty((), dtype=dtype).element_size()
    h_pad = max(MIN_BLOCK, triton.next_power_of_2(H))
    block_b = _env_block("FUSED_RNN_TRITON_BLOCK_B") or min(
        MAX_BLOCK_B, max(MIN_BLOCK_B, triton.next_power_of_2(B)))
    n_batch_tiles = triton.cdiv(B, block_b)

    forced = _env_choice("FUSED_RNN_TRITON_LAYOUT", LAYOUTS)
    weights = _env_choice("FUSED_RNN_TRITON_WEIGHTS", ("resident", "streamed"))
    forced_block_h = _env_block("FUSED_RNN_TRITON_BLOCK_H")
    forced_block_k = _env_block("FUSED_RNN_TRITON_BLOCK_K")

    def slice_bytes(block_h: int) -> int:
        return gates * h_pad * block_h * element

    if forced == "single" or (forced == "auto" and forced_block_h is None
                              and slice_bytes(h_pad) <= SINGLE_WEIGHT_BYTES):
        name, block_h = "single", h_pad
    else:
        if forced_block_h is not None:
            block_h = min(forced_block_h, h_pad)
        else:
            # Smallest slice whose grid is still resident: the most programs (on-chip weight
            # storage and parallel work) the persistent launch can have.
            programs = max(1, _resident_programs(device) // n_batch_tiles)
            block_h = MIN_BLOCK
            while block_h < h_pad and triton.cdiv(H, block_h) > programs:
                block_h *= 2
        n_slices = triton.cdiv(H, block_h)
        if forced in ("persistent", "stepwise"):
            name = forced
        elif n_slices == 1:
            name = "single"
        elif n_batch_tiles * n_slices <= _resident_programs(device) and not interpreting():
            name = "persistent"
        else:
            name = "stepwise"
    n_slices = triton.cdiv(H, block_h) if name != "single" else 1
    if name == "single":
        block_h = h_pad
    if name == "persistent" and n_slices > 1:
        if interpreting():
            raise RuntimeError(
                "fused_rnn triton: the persistent layout with several programs per batch tile "
                "needs a GPU (the interpreter runs programs one after another, so its grid "
                "barrier would never open); use FUSED_RNN_TRITON_LAYOUT=stepwise"
            )
        if n_batch_tiles * n_slices > _resident_programs(device):
            raise RuntimeError(
                f"fused_rnn triton: a persistent grid of {n_batch_tiles * n_slices} programs "
                f"cannot be resident on {device} ({_resident_programs(device)} SMs)"
            )

    if weights == "auto":
        resident = slice_bytes(block_h) <= max(RESIDENT_WEIGHT_BYTES, SINGLE_WEIGHT_BYTES)
    else:
        resident = weights == "resident"
    if resident:
        block_k = h_pad
    else:
        block_k = min(h_pad, forced_block_k or 64)
    weight_bytes = slice_bytes(block_h) if resident else gates * block_k * block_h * element
    return Layout(
        name=name,
        block_b=block_b,
        block_h=block_h,
        h_pad=h_pad,
        block_k=block_k,
        weights_resident=resident,
        n_batch_tiles=n_batch_tiles,
        n_slices=n_slices,
        num_warps=_num_warps(weight_bytes, block_b, block_h),
    )


def allow_tf32(dtype: torch.dtype) -> bool:
    """tl.dot of fp32 operands uses TF32 only when torch allows it for matmuls."""
    return dtype == torch.float32 and bool(torch.backends.cuda.matmul.allow_tf32)


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot gets bf16 wrong: multiply in fp32 there (same result)."""
    return interpreting() and dtype == torch.bfloat16
