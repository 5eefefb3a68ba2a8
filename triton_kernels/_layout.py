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

# Budgets of one program (8 warps, one program per SM), measured on the sm_90 compilation
# (ptxas register and spill report, Triton's shared-memory size) of these kernels:
#: The whole w_hh in one program (single layout): no barrier at all, worth it while small.
SINGLE_WEIGHT_BYTES = 64 * 1024
#: A program's w_hh slice kept on chip (Triton stages it in shared memory, hoisted out of the
#: step loop) ...
RESIDENT_WEIGHT_BYTES = 160 * 1024
#: ... together with the staging of the [BLOCK_B, H_PAD] operand for the tensor cores, within
#: the 227 KiB of shared memory an H100 block can have, with room for layout conversions.
SHARED_MEMORY_BYTES = 200 * 1024
#: Elements of the staged operand: beyond this its registers make the backward spill.
OPERAND_ELEMENTS = 32 * 1024
#: gates x BLOCK_B x BLOCK_H fp32 accumulators (and as many gate values) per program.
TILE_ELEMENTS = 4096
#: Batch rows per program: tl.dot needs >= 16; larger tiles share one weight slice among
#: more rows (fewer programs for the same work).
MIN_BLOCK_B, MAX_BLOCK_B = 16, 64
MIN_BLOCK = 16
#: Contraction slice of the streamed product (split over up to 8 warps, 16 each).
STREAM_BLOCK_K = 128


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
    split_k: int = 1          # warps sharing the contraction of the exchanged operand

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


def _num_warps(gates: int, block_b: int, block_h: int, h_pad: int) -> int:
    # Small programs synchronise fewer warps at every bar.sync; larger ones need the registers.
    small = gates * block_b * block_h <= TILE_ELEMENTS // 2 and block_b * h_pad <= 4096
    return 4 if small else 8


def _floor_power_of_2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _split_k(num_warps: int, block_b: int, block_h: int, block_k: int) -> int:
    """Parts the contraction of the exchanged operand is split into (``_common.product``).

    Triton spreads a 2-D dot's output over warps in 16-row tiles and never splits K: the
    [16, 16] output of a narrow slice leaves every warp running the whole K chain (8x
    redundant work with 8 warps). A batched 3-D dot puts the warps on the batch dimension
    (warpsPerCTA [num_warps, 1, 1] in the sm_90 TTGIR), so one part per warp; each part keeps
    K >= 16 (tl.dot's minimum), and the fp32 partial products (parts x BLOCK_B x BLOCK_H)
    stay within TILE_ELEMENTS * 2 (32 registers a thread at 8 warps).
    """
    return max(1, min(num_warps, block_k // 16, (2 * TILE_ELEMENTS) // (block_b * block_h)))


@dataclasses.dataclass(frozen=True)
class _Plan:
    block_b: int
    block_h: int
    resident: bool


def _automatic_plan(gates: int, B: int, H: int, h_pad: int, element: int, programs: int,
                    block_bs: list[int], forced_block_h: int | None) -> tuple[str, _Plan]:
    """The selection rule of README.md: (layout name, plan) before overrides."""

    def fits_chip(block_b: int, block_h: int) -> bool:
        weights = gates * h_pad * block_h * element
        return (weights <= RESIDENT_WEIGHT_BYTES and block_b * h_pad <= OPERAND_ELEMENTS
                and weights + block_b * h_pad * element <= SHARED_MEMORY_BYTES)

    # 1. The whole w_hh fits one program: no exchange, no barrier, h stays in registers.
    if forced_block_h is None and gates * h_pad * h_pad * element <= SINGLE_WEIGHT_BYTES:
        for block_b in block_bs:
            if gates * block_b * h_pad <= TILE_ELEMENTS and fits_chip(block_b, h_pad):
                return "single", _Plan(block_b, h_pad, True)

    # 2. Hidden units split over the programs of a batch tile, as many programs as can be
    # resident (the most on-chip weight storage), the largest batch tile whose weight slice
    # stays on chip, else the largest whose accumulators fit (weights streamed from L2).
    plans = []
    for block_b in block_bs:
        per_tile = max(1, programs // triton.cdiv(B, block_b))
        block_h = forced_block_h or MIN_BLOCK
        while forced_block_h is None and block_h < h_pad and triton.cdiv(H, block_h) > per_tile:
            block_h *= 2
        block_h = min(block_h, h_pad)
        if gates * block_b * block_h <= TILE_ELEMENTS or forced_block_h is not None:
            plans.append(_Plan(block_b, block_h, fits_chip(block_b, block_h)))
    plan = next((p for p in plans if p.resident), plans[0] if plans else None)
    if plan is None:
        # 3. More batch than resident programs can cover with small tiles: the largest batch
        # tile, the widest slice whose accumulators fit, one launch per step.
        block_b = block_bs[0]
        block_h = max(MIN_BLOCK, min(h_pad, _floor_power_of_2(TILE_ELEMENTS // (gates * block_b))))
        plan = _Plan(block_b, block_h, fits_chip(block_b, block_h))
    n_slices = triton.cdiv(H, plan.block_h)
    if n_slices == 1:
        return "single", plan
    if triton.cdiv(B, plan.block_b) * n_slices <= programs and not interpreting():
        return "persistent", plan
    return "stepwise", plan


def choose_layout(gates: int, B: int, H: int, dtype: torch.dtype, device: torch.device) -> Layout:
    """Layout of one call: ``gates`` weight blocks of [H, H] (4 LSTM, 3 GRU, 1 RNN)."""
    element = torch.empty((), dtype=dtype).element_size()
    h_pad = max(MIN_BLOCK, triton.next_power_of_2(H))
    forced = _env_choice("FUSED_RNN_TRITON_LAYOUT", LAYOUTS)
    weights = _env_choice("FUSED_RNN_TRITON_WEIGHTS", ("resident", "streamed"))
    forced_block_b = _env_block("FUSED_RNN_TRITON_BLOCK_B")
    forced_block_h = _env_block("FUSED_RNN_TRITON_BLOCK_H")
    forced_block_k = _env_block("FUSED_RNN_TRITON_BLOCK_K")
    programs = _resident_programs(device)

    if forced_block_b is not None:
        block_bs = [forced_block_b]
    else:
        block_bs = [min(MAX_BLOCK_B, max(MIN_BLOCK_B, triton.next_power_of_2(B)))]
        while block_bs[-1] > MIN_BLOCK_B:
            block_bs.append(block_bs[-1] // 2)
    if forced_block_h is not None:
        forced_block_h = min(forced_block_h, h_pad)
    name, plan = _automatic_plan(gates, B, H, h_pad, element, programs, block_bs,
                                 None if forced == "single" else forced_block_h)
    block_b, block_h, resident = plan.block_b, plan.block_h, plan.resident
    if forced == "single":
        name, block_h = "single", h_pad
        resident = gates * h_pad * h_pad * element <= SINGLE_WEIGHT_BYTES
        # The largest batch tile whose accumulators fit (else the smallest).
        block_b = next((b for b in block_bs if gates * b * h_pad <= TILE_ELEMENTS), block_bs[-1])
    elif forced != "auto":
        name = forced
    if weights != "auto":
        resident = weights == "resident"
    n_batch_tiles = triton.cdiv(B, block_b)
    n_slices = triton.cdiv(H, block_h)

    if name == "persistent" and n_slices > 1:
        if interpreting():
            raise RuntimeError(
                "fused_rnn triton: the persistent layout with several programs per batch tile "
                "needs a GPU (the interpreter runs programs one after another, so its grid "
                "barrier would never open); use FUSED_RNN_TRITON_LAYOUT=stepwise"
            )
        if n_batch_tiles * n_slices > programs:
            raise RuntimeError(
                f"fused_rnn triton: a persistent grid of {n_batch_tiles * n_slices} programs "
                f"cannot be resident on {device} ({programs} SMs)"
            )
    block_k = h_pad if resident else min(h_pad, forced_block_k or STREAM_BLOCK_K)
    num_warps = _num_warps(gates, block_b, block_h, h_pad)
    operand_in_registers = name == "single" and resident
    return Layout(
        name=name,
        block_b=block_b,
        block_h=block_h,
        h_pad=h_pad,
        block_k=block_k,
        weights_resident=resident,
        n_batch_tiles=n_batch_tiles,
        n_slices=n_slices,
        num_warps=num_warps,
        split_k=1 if operand_in_registers else _split_k(num_warps, block_b, block_h, block_k),
    )


def allow_tf32(dtype: torch.dtype) -> bool:
    """tl.dot of fp32 operands uses TF32 only when torch allows it for matmuls."""
    return dtype == torch.float32 and bool(torch.backends.cuda.matmul.allow_tf32)


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot gets bf16 wrong: multiply in fp32 there (same result)."""
    return interpreting() and dtype == torch.bfloat16
