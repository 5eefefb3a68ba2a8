"""Per-step synchronisation of the programs that share a batch tile.

When a batch tile's hidden units are split over several programs, every program needs the
slices all the others wrote in this step before it can start the next one. The persistent
launch synchronises them with a counting barrier in global memory (one int32 counter per batch
tile, zeroed before the launch, never reset: after local step s every program waits for the
counter to reach n_programs * (s + 1), so no barrier round can be confused with the next).

Memory ordering (PTX memory model, scope gpu):
  1. every thread of the program stores its part of the slice (plain st.global);
  2. ``tl.debug_barrier()`` (bar.sync) orders those stores before what thread 0 does next;
  3. one atomic add with release semantics publishes them: release is cumulative over the
     writes the releasing thread has observed, which includes the whole CTA's through bar.sync
     (the pattern of CUDA's cooperative-groups grid.sync: __syncthreads, fence, atomic);
  4. the program polls the counter with volatile loads (cheap, no read-modify-write traffic
     on the contended line) until it reaches the target, then performs one acquire
     read-modify-write: it reads the counter's latest value, which carries all the releases
     counted in it, so every slice write of the step happens-before what follows;
  5. ``tl.debug_barrier()`` again, so no thread of the program reads the exchange buffer
     before the acquire is done. The reads themselves use the .cg cache modifier (L2 only),
     which rules out stale lines in this SM's L1 independently of the acquire.

The barrier is split in two (``step_arrive`` after the exchange stores, ``step_wait`` before
the next step's reads) so that the step's outputs (y, workspace, grad_gx) are stored between
the two: the release does not wait for them, and they overlap the other programs' arrival.

A barrier of this kind deadlocks unless all programs are resident at once: the launcher uses
it only for grids no larger than the number of SMs (one program per SM), and never in the
interpreter, which runs programs one after another (see _layout.py).
"""

import triton
import triton.language as tl

#: Values of the SYNC constexpr of the kernels.
SYNC_NONE = 0        # the operand stays in registers, or the launch does one step (stepwise)
SYNC_PROGRAM = 1     # one program per batch tile, operand through global memory: bar.sync
SYNC_GRID = 2        # several programs per batch tile in one persistent launch


@triton.jit
def step_arrive(counter_ptr, SYNC: tl.constexpr):
    """First half of the grid barrier: publishes this program's slice stores of the step
    (bar.sync, then one release add). Work that others do not wait for (the step's outputs)
    goes between arrive and wait, off the critical path: the release covers only the stores
    before it."""
    if SYNC == 2:
        tl.debug_barrier()
        tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def step_wait(counter_ptr, target, SYNC: tl.constexpr):
    """Second half: returns once every program of the batch tile has arrived ``target`` times
    in total (SYNC_GRID), or once every thread of this program is past its stores
    (SYNC_PROGRAM)."""
    if SYNC == 2:
        while tl.load(counter_ptr, volatile=True) < target:
            pass
        tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()
    elif SYNC == 1:
        tl.debug_barrier()
