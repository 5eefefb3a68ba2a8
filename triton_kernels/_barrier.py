"""Per-step synchronisation of the programs that share a batch tile.

When a batch tile's hidden units are split over several programs, every program needs the
slices all the others wrote in this step before it can start the next one. The persistent
launch synchronises them with a counting barrier in global memory: one int32 counter per batch
tile, zeroed before the launch and never reset (after local step s every program waits for the
counter to reach n_programs * (s + 1), so no barrier round can be confused with the next), and
one status word after the counters (``barrier_words`` in _launch.py).

Memory ordering (PTX memory model, scope gpu):
  1. every thread of the program stores its part of the slice (plain st.global);
  2. ``tl.debug_barrier()`` (bar.sync) orders those stores before what thread 0 does next;
  3. one atomic add with release semantics publishes them: release is cumulative over the
     writes the releasing thread has observed, which includes the whole CTA's through bar.sync
     (the pattern of CUDA's cooperative-groups grid.sync: __syncthreads, fence, atomic);
  4. the program polls the counter with volatile loads (cheap, no read-modify-write traffic
     on the contended line) until it reaches the target, then reads it once more with an
     acquire read-modify-write *whose value decides the loop that follows*: an acquire whose
     result is unused is deleted by Triton 3.6 (its PTX has none; 3.8 keeps it), so the
     acquire must carry the wait condition. It reads the counter's latest value, which carries
     all the releases counted in it, so every slice write of the step happens-before what
     follows. ``compile_check`` asserts that the PTX of every kernel with a grid barrier has
     the acquire, under each Triton version CI runs;
  5. ``tl.debug_barrier()`` again, so no thread of the program reads the exchange buffer
     before the acquire is done.
  The exchange buffer is then read with ``ld.global.cg`` (L2, see ``_common.load_operand``),
  never through this SM's L1, which is not coherent with other SMs' writes. That takes more
  than the .cg modifier: Triton's software pipeliner turns loads into ``cp.async`` copies and
  drops the modifier of those under 16 bytes (``cp.async.ca``, through L1). No loop that
  reads the exchange buffer is pipelined (the step loop, and the streamed product, which
  prefetches its next slice into registers instead), and ``compile_check`` asserts that no
  kernel that reads an exchange buffer has a ``cp.async`` at all, under each Triton version
  CI runs.

The barrier is split in two (``step_arrive`` after the exchange stores, ``step_wait`` before
the next step's reads) so that the step's outputs (y, workspace, grad_gx) are stored between
the two: the release does not wait for them, and they overlap the other programs' arrival.

Co-residency: a barrier of this kind deadlocks unless all programs of the grid run at once.
The persistent layout is therefore launched as a cooperative grid (``launch_cooperative_grid``:
the driver co-schedules every program or refuses the launch), only for grids no larger than
the number of SMs, never under graph capture (torch.compile or CUDA graphs, where that launch
option cannot be guaranteed to pass through) and never in the interpreter, which runs programs
one after another (see _layout.py). The wait is bounded all the same: a program that polls
``MAX_POLLS`` times without seeing the round complete sets the status word and stops waiting
for the rest of the launch (its results are then wrong), and the launcher raises an error when
it finds the status word set, instead of hanging.
"""

import triton
import triton.language as tl

#: Values of the SYNC constexpr of the kernels.
SYNC_NONE = 0        # the operand stays in registers, or the launch does one step (stepwise)
SYNC_PROGRAM = 1     # one program per batch tile, operand through global memory: bar.sync
SYNC_GRID = 2        # several programs per batch tile in one persistent launch

#: Polls of the counter before a barrier round is declared stuck. A poll is an L2 round trip
#: (~0.5-1 us), so this is seconds: far beyond any real wait, short of a hang.
MAX_POLLS = tl.constexpr(1 << 22)
#: The status word's value after a stuck barrier.
STATUS_BARRIER_TIMEOUT = tl.constexpr(1)


@triton.jit
def step_arrive(counter_ptr, SYNC: tl.constexpr):
    """First half of the grid barrier: publishes this program's slice stores of the step
    (bar.sync, then one release add to its batch tile's counter; ``counter_ptr`` is the first
    of the launch's barrier words). Work that others do not wait for (the step's outputs) goes
    between arrive and wait, off the critical path: the release covers only the stores before
    it."""
    if SYNC == 2:
        tl.debug_barrier()
        tl.atomic_add(counter_ptr + tl.program_id(0), 1, sem="release", scope="gpu")


@triton.jit
def step_wait(counter_ptr, target, stuck, SYNC: tl.constexpr):
    """Second half: returns once every program of the batch tile has arrived ``target`` times
    in total (SYNC_GRID), or once every thread of this program is past its stores
    (SYNC_PROGRAM). ``stuck`` (int32, 0 at the start of the launch) is carried through the
    step loop: once a round has timed out (and the status word after the counters says so),
    later rounds do not wait again. Returns it."""
    if SYNC == 2:
        counter = counter_ptr + tl.program_id(0)
        polls = stuck * MAX_POLLS          # a program that timed out before polls no more
        while (tl.load(counter, volatile=True) < target) & (polls < MAX_POLLS):
            polls += 1
        # The acquire: its value is the loop's condition, so no compiler can drop it.
        arrived = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        while (arrived < target) & (polls < MAX_POLLS):
            arrived = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
            polls += 1
        timed_out = arrived < target
        tl.atomic_max(counter_ptr + tl.num_programs(0), STATUS_BARRIER_TIMEOUT, mask=timed_out,
                      sem="relaxed", scope="gpu")
        stuck = tl.where(timed_out, 1, stuck)
        tl.debug_barrier()
    elif SYNC == 1:
        tl.debug_barrier()
    return stuck
