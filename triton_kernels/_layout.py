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

# Budgets of one program (8 warps, one program per SM), set from the sm_90 compilation (ptxas
# register and spill report, Triton's shared-memory size) of these kernels under Triton 3.6 and
# 3.8: `python -m fused_rnn.triton_kernels.compile_check` fails when a layout this rule picks
# spills or overflows shared memory.
#: The whole w_hh in one program (single layout): no barrier at all, worth it while small.
SINGLE_WEIGHT_BYTES = 64 * 1024
#: A program's w_hh slice kept on chip (Triton stages it in shared memory, hoisted out of the
#: step loop) ...
RESIDENT_WEIGHT_BYTES = 160 * 1024
#: ... together with the staging of the [BLOCK_B, H_PAD] operand for the tensor cores, within
#: the 227 KiB of shared memory an H100 block can have, with room for layout conversions.
SHARED_MEMORY_BYTES = 200 * 1024
#: Registers of the exchanged operand a step's products load whole when the weights are
#: resident: [BLOCK_B, H_PAD] once in the forward (h, shared by the gates' products), once per
#: gate in the backward (the gates' gradients). Beyond this the weights are streamed, which
#: loads the operand in BLOCK_K slices.
OPERAND_BYTES = 16 * 1024
#: gates x BLOCK_B x BLOCK_H accumulators in the gate-maths dtype (fp32, fp64 for fp64), and
#: as many gate values: 16 fp32 registers a thread at 8 warps, when the output tile is spread
#: over all warps (the single layout's 2-D dots) ...
ACCUMULATOR_BYTES = 16 * 1024
#: ... and a quarter of it when the product is split over the warps along K (the exchanged
#: layouts, ``_Budget.split_k``): every warp then holds a whole [BLOCK_B, BLOCK_H] tile of
#: partial sums per gate, 32 fp32 registers a thread for all gates.
SPLIT_ACCUMULATOR_BYTES = ACCUMULATOR_BYTES // 4
#: Batch rows per program: tl.dot needs >= 16; larger tiles share one weight slice among
#: more rows (fewer programs for the same work), up to what the forward's gate maths leave
#: registers for (64 rows spilled in every forward layout; fp64 halves it again).
MIN_BLOCK_B, MAX_BLOCK_B = 16, 32
MIN_BLOCK = 16
#: Contraction slice of the streamed product (split over up to 8 warps, 16 each), at most, and
#: the registers of its slices of operand and weights: less in the forward, which keeps the
#: step's input projections and gate values live across its products.
STREAM_BLOCK_K = 128
STREAM_BYTES_FORWARD = 8 * 1024
STREAM_BYTES_BACKWARD = 16 * 1024


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


def _floor_power_of_2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


@dataclasses.dataclass(frozen=True)
class _Budget:
    """What one program of a call can hold: ``gates`` blocks of w_hh, storage elements of
    ``element`` bytes, accumulators of ``acc_element`` bytes (fp32, fp64 for fp64)."""

    gates: int
    h_pad: int
    element: int
    acc_element: int
    backward: bool          # the backward kernel: its exchanged operand is all gates' gradients
    fma: bool               # products on FMA units (fp64; fp32 without TF32): operands in registers

    @property
    def operand_gates(self) -> int:
        return self.gates if self.backward else 1

    def accumulators_fit(self, block_b: int, block_h: int, split: bool = True) -> bool:
        """Whether the gates' accumulators of a [block_b, block_h] tile fit: ``split`` for a
        product split over the warps along K (every layout but single), else spread."""
        limit = SPLIT_ACCUMULATOR_BYTES if split else ACCUMULATOR_BYTES
        return self.gates * block_b * block_h * self.acc_element <= limit

    def widest_slice(self, block_b: int) -> int:
        """The widest power-of-two slice whose split accumulators fit next to ``block_b``
        rows."""
        units = SPLIT_ACCUMULATOR_BYTES // (self.gates * block_b * self.acc_element)
        return max(MIN_BLOCK, min(self.h_pad, _floor_power_of_2(units)))

    def fits_chip(self, block_b: int, block_h: int) -> bool:
        """Whether the weight slice can stay on chip for the whole sequence (and the whole
        operand be loaded at once)."""
        weights = self.gates * self.h_pad * block_h * self.element
        operand = block_b * self.h_pad * self.element
        return (weights <= RESIDENT_WEIGHT_BYTES
                and self.operand_gates * operand <= OPERAND_BYTES
                and weights + operand <= SHARED_MEMORY_BYTES)

    def single_fits(self) -> bool:
        weights = self.gates * self.h_pad * self.h_pad * self.element
        return weights <= SINGLE_WEIGHT_BYTES // (2 if self.fma else 1)

    def max_block_b(self) -> int:
        return MAX_BLOCK_B * 4 // self.acc_element

    def num_warps(self, block_b: int, block_h: int, resident: bool) -> int:
        # Small programs synchronise fewer warps at every bar.sync; larger ones need the
        # registers (so do streamed weights' slices, and fp32/fp64 products, which run on FMA
        # units whose operands live in them).
        small = (self.gates * block_b * block_h * self.acc_element <= ACCUMULATOR_BYTES // 2
                 and block_b * self.h_pad * self.element <= 8 * 1024 and self.element == 2
                 and resident)
        return 4 if small else 8

    def split_k(self, num_warps: int, block_k: int) -> int:
        """Parts the contraction of the exchanged operand is split into (``_common.product``).

        Triton spreads a 2-D dot's output over warps in 16-row tiles and never splits K: the
        [16, 16] output of a narrow slice leaves every warp running the whole K chain (8x
        redundant work with 8 warps). A batched 3-D dot puts the warps on the batch dimension
        (warpsPerCTA [num_warps, 1, 1] in the sm_90 TTGIR), so one part per warp, each part
        keeping K >= 16 (tl.dot's minimum). Fewer parts than warps make warps share a part,
        which costs registers rather than saving them (the compile check showed more spills).
        """
        return _floor_power_of_2(max(1, min(num_warps, block_k // 16)))

    def stream_block_k(self, block_b: int, block_h: int) -> int:
        """Contraction slice of the streamed product: the operand slice [block_b, k] and the
        weight slice [k, block_h], each held twice (the next one is prefetched), within
        STREAM_BYTES_* (half of it for products on FMA units, whose operands live in
        registers)."""
        budget = STREAM_BYTES_BACKWARD if self.backward else STREAM_BYTES_FORWARD
        budget //= 2 if self.fma else 1
        k = budget // (2 * (block_b + block_h) * self.element)
        return max(MIN_BLOCK, min(self.h_pad, STREAM_BLOCK_K, _floor_power_of_2(k)))


@dataclasses.dataclass(frozen=True)
class _Plan:
    block_b: int
    block_h: int
    resident: bool


def _automatic_plan(budget: _Budget, B: int, H: int, programs: int, block_bs: list[int],
                    forced_block_h: int | None, grid_barrier: bool) -> tuple[str, _Plan]:
    """The selection rule of README.md: (layout name, plan) before overrides."""
    h_pad = budget.h_pad
    # 1. The whole w_hh fits one program: no exchange, no barrier, h stays in registers.
    if forced_block_h is None and budget.single_fits():
        for block_b in block_bs:
            if (budget.accumulators_fit(block_b, h_pad, split=False)
                    and budget.fits_chip(block_b, h_pad)):
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
        if budget.accumulators_fit(block_b, block_h):
            plans.append(_Plan(block_b, block_h, budget.fits_chip(block_b, block_h)))
    plan = next((p for p in plans if p.resident), plans[0] if plans else None)
    if plan is None:
        # 3. More batch than resident programs can cover with small tiles: the largest batch
        # tile whose accumulators fit beside the narrowest slice, the widest slice that fits
        # beside it, one launch per step.
        block_b = next((b for b in block_bs if budget.accumulators_fit(b, MIN_BLOCK)),
                       block_bs[-1])
        block_h = budget.widest_slice(block_b)
        plan = _Plan(block_b, block_h, budget.fits_chip(block_b, block_h))
    n_slices = triton.cdiv(H, plan.block_h)
    if n_slices == 1:
        return "single", plan
    if triton.cdiv(B, plan.block_b) * n_slices <= programs and grid_barrier:
        return "persistent", plan
    return "stepwise", plan


def _forced_within_budget(budget: _Budget, block_bs: list[int], block_h: int, what: str,
                          split: bool = True) -> list[int]:
    """The batch tiles whose accumulators fit next to a forced slice width; a forced
    combination that fits none is refused (it would compile to a program that spills)."""
    fitting = [b for b in block_bs if budget.accumulators_fit(b, block_h, split)]
    if not fitting:
        raise ValueError(
            f"fused_rnn triton: {what} leave(s) no batch tile of at least {min(block_bs)} rows "
            f"whose {budget.gates} x rows x {block_h} accumulators fit the budget of "
            f"{SPLIT_ACCUMULATOR_BYTES if split else ACCUMULATOR_BYTES} bytes per program; "
            f"force smaller blocks"
        )
    return fitting


def choose_layout(gates: int, B: int, H: int, dtype: torch.dtype, device: torch.device,
                  *, backward: bool = False, grid_barrier: bool = True) -> Layout:
    """Layout of one call: ``gates`` weight blocks of [H, H] (4 LSTM, 3 GRU, 1 RNN), the
    forward or the ``backward`` kernel (whose exchanged operand is all gates' gradients).

    ``grid_barrier``: whether the call may run the persistent layout's grid barrier (a
    cooperative launch, here and now: not under graph capture, not in the interpreter). When
    not, a split of the hidden units runs stepwise, and forcing the persistent layout with
    several programs per batch tile is an error."""
    element = torch.empty((), dtype=dtype).element_size()
    h_pad = max(MIN_BLOCK, triton.next_power_of_2(H))
    budget = _Budget(gates, h_pad, element, 8 if dtype == torch.float64 else 4, backward,
                     fma=dtype == torch.float64 or (dtype == torch.float32 and not allow_tf32(dtype)))
    forced = _env_choice("FUSED_RNN_TRITON_LAYOUT", LAYOUTS)
    weights = _env_choice("FUSED_RNN_TRITON_WEIGHTS", ("resident", "streamed"))
    forced_block_b = _env_block("FUSED_RNN_TRITON_BLOCK_B")
    forced_block_h = _env_block("FUSED_RNN_TRITON_BLOCK_H")
    forced_block_k = _env_block("FUSED_RNN_TRITON_BLOCK_K")
    programs = _resident_programs(device)

    if forced_block_b is not None:
        block_bs = [forced_block_b]
    else:
        block_bs = [min(budget.max_block_b(), max(MIN_BLOCK_B, triton.next_power_of_2(B)))]
        while block_bs[-1] > MIN_BLOCK_B:
            block_bs.append(block_bs[-1] // 2)
    if forced_block_h is not None and forced != "single":
        forced_block_h = min(forced_block_h, h_pad)
        block_bs = _forced_within_budget(budget, block_bs, forced_block_h,
                                         "FUSED_RNN_TRITON_BLOCK_H/BLOCK_B")
    if forced == "single":
        block_bs = _forced_within_budget(budget, block_bs, h_pad,
                                         "FUSED_RNN_TRITON_LAYOUT=single (all units in one program)",
                                         split=False)
    name, plan = _automatic_plan(budget, B, H, programs, block_bs,
                                 None if forced == "single" else forced_block_h, grid_barrier)
    block_b, block_h, resident = plan.block_b, plan.block_h, plan.resident
    if forced == "single":
        name, block_h, block_b = "single", h_pad, block_bs[0]
        resident = budget.single_fits()
    elif forced != "auto":
        name = forced
    if weights != "auto":
        resident = weights == "resident"
    n_batch_tiles = triton.cdiv(B, block_b)
    n_slices = triton.cdiv(H, block_h)

    if name == "persistent" and n_slices > 1:
        if not grid_barrier:
            raise RuntimeError(
                "fused_rnn triton: the persistent layout with several programs per batch tile "
                "needs a cooperative launch on a GPU, outside graph capture (torch.compile, CUDA "
                "graphs) and outside the interpreter (which runs programs one after another, so "
                "its grid barrier would never open); use FUSED_RNN_TRITON_LAYOUT=stepwise"
            )
        if n_batch_tiles * n_slices > programs:
            raise RuntimeError(
                f"fused_rnn triton: a persistent grid of {n_batch_tiles * n_slices} programs "
                f"cannot be resident on {device} ({programs} SMs)"
            )
    if resident:
        block_k = h_pad
    else:
        block_k = min(h_pad, forced_block_k or budget.stream_block_k(block_b, block_h))
    num_warps = budget.num_warps(block_b, block_h, resident)
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
        # The single layout's [BLOCK_B, H_PAD] output spreads over the warps as it is.
        split_k=1 if name == "single" else budget.split_k(num_warps, block_k),
    )


def allow_tf32(dtype: torch.dtype) -> bool:
    """tl.dot of fp32 operands uses TF32 only when torch allows it for matmuls."""
    return dtype == torch.float32 and bool(torch.backends.cuda.matmul.allow_tf32)


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot gets bf16 wrong: multiply in fp32 there (same result)."""
    return interpreting() and dtype == torch.bfloat16
