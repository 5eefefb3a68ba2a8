"""Device helpers shared by the LSTM, GRU and RNN kernels: gate maths, the recurrent product.

Every kernel runs the same program layout (see README.md): program (pid_b, pid_h) owns
``BLOCK_B`` batch rows and ``BLOCK_H`` hidden units of every gate, and multiplies an operand
that spans all ``H`` units (h_{t-1} in the forward, the gate gradients in the backward) by its
slice of ``w_hh``. The operand comes either from registers (one program owns all units) or
from a global exchange buffer that every program of the batch tile writes its slice into.

Transcendentals are written with ``tl.exp`` only: the interpreter (TRITON_INTERPRET=1, used by
CPU-only CI) has no libdevice.
"""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # 2 sigmoid(2x) - 1: exact at both tails (exp overflows to inf -> -1, underflows -> 1).
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def relu(x):
    # NaN passes through, as in torch.relu. tl.maximum(x, 0.0) returns 0 for it on a GPU
    # (PTX max.f32) but NaN in the interpreter (numpy), and tl.where(x > 0, x, 0) gives 0 on
    # both: a comparison with NaN is false, so the NaN must sit in the else branch.
    return tl.where(x < 0.0, 0.0, x)


@triton.jit
def relu_backward(h, dh):
    # dh where relu's output h is positive or NaN, as torch's threshold_backward (h <= 0: 0).
    return tl.where(h <= 0.0, 0.0, dh)


@triton.jit
def dot(a, b, acc, TF32: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with an fp32 (fp64 for fp64) accumulator; fp16/bf16 operands run on the
    tensor cores as they are, fp32 ones as TF32 only when TF32 is set (torch's
    allow_tf32 for matmuls), else in full fp32.

    ``out_dtype`` is the accumulator's: Triton 3.6 defaults it to fp32 and asserts that an
    fp64 accumulator matches it (3.8 follows the accumulator).

    UPCAST: multiply in fp32 instead of the operands' own dtype. Only the interpreter sets it,
    for bf16, which its tl.dot mishandles; the products of bf16 numbers are exact in fp32, so
    the result is the one a bf16 tensor-core dot with fp32 accumulation gives.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee",
                      out_dtype=acc.dtype)
    elif TF32:
        return tl.dot(a, b, acc, input_precision="tf32", out_dtype=acc.dtype)
    else:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)


@triton.jit
def to_compute(x, FP64: tl.constexpr):
    """Gate maths run in fp32 for fp32/fp16/bf16 storage, in fp64 for fp64."""
    if FP64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def zeros_acc(BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, FP64: tl.constexpr):
    if FP64:
        return tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float64)
    else:
        return tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)


@triton.jit
def load_weight_tile(
    w_ptr,          # first element of this gate's [H, H] block of w_hh [G*H, H]
    k0,             # first contraction index of the tile
    offs_j,         # [BLOCK_H] own hidden units
    mask_j,
    H,
    TRANSPOSED: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """Weight tile for contraction indices [k0, k0 + BLOCK_K), zero outside [H, H]:
    [BLOCK_K, BLOCK_H], or with SPLIT_K > 1 [SPLIT_K, BLOCK_K // SPLIT_K, BLOCK_H] (see
    ``product``).

    TRANSPOSED (forward): tile[k, j] = w[j, k], the product h_{t-1} @ w^T contracts over the
    columns of w_hh. Otherwise (backward): tile[k, j] = w[k, j], dgates @ w_hh contracts over
    the rows (the gate units).
    """
    if SPLIT_K == 1:
        offs_k = k0 + tl.arange(0, BLOCK_K)[:, None]                    # [BLOCK_K, 1]
        j = offs_j[None, :]
    else:
        KC: tl.constexpr = BLOCK_K // SPLIT_K
        offs_k = (k0 + tl.arange(0, SPLIT_K)[:, None, None] * KC
                  + tl.arange(0, KC)[None, :, None])                     # [SPLIT_K, KC, 1]
        j = offs_j[None, None, :]
    mask = (offs_k < H) & (j < H)
    if TRANSPOSED:
        ptrs = w_ptr + j.to(tl.int64) * H + offs_k
    else:
        ptrs = w_ptr + offs_k.to(tl.int64) * H + j
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def load_operand(
    src_ptr,        # row 0, column 0 of the operand in the exchange buffer
    ROW_STRIDE: tl.constexpr,   # constexpr: lets the loads vectorise
    offs_row,       # [BLOCK_B] rows of this batch tile in the exchange buffer
    k0,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """Columns [k0, k0 + BLOCK_K) of an operand other programs wrote this step:
    [BLOCK_B, BLOCK_K], or with SPLIT_K > 1 [SPLIT_K, BLOCK_B, BLOCK_K // SPLIT_K].

    .cg: served by L2, never by this SM's L1, which is not coherent with the writes of other
    SMs. Padding rows and columns of the buffer are zero, so no mask is needed.
    """
    if SPLIT_K == 1:
        ptrs = src_ptr + offs_row[:, None] * ROW_STRIDE + (k0 + tl.arange(0, BLOCK_K))[None, :]
    else:
        KC: tl.constexpr = BLOCK_K // SPLIT_K
        ptrs = (src_ptr + offs_row[None, :, None] * ROW_STRIDE + k0
                + tl.arange(0, SPLIT_K)[:, None, None] * KC + tl.arange(0, KC)[None, None, :])
    return tl.load(ptrs, cache_modifier=".cg")


@triton.jit
def product(a, w, acc, TF32: tl.constexpr, UPCAST: tl.constexpr, SPLIT_K: tl.constexpr):
    """acc [BLOCK_B, BLOCK_H] + a @ w.

    With SPLIT_K > 1 the contraction is split over SPLIT_K batched products, a
    [SPLIT_K, BLOCK_B, KC] x w [SPLIT_K, KC, BLOCK_H], summed at the end: the warps of the
    program each take one part of K. A plain [16, 16] dot would give work to only two of them
    (Triton tiles the output over warps, never K) and make every warp run the whole chain.
    """
    if SPLIT_K == 1:
        return dot(a, w, acc, TF32, UPCAST)
    else:
        parts = tl.zeros([SPLIT_K, acc.shape[0], acc.shape[1]], dtype=acc.dtype)
        return acc + tl.sum(dot(a, w, parts, TF32, UPCAST), axis=0)


@triton.jit
def streamed_product(
    acc,            # [BLOCK_B, BLOCK_H] fp32 accumulator
    src_ptr,        # operand in the exchange buffer (see load_operand)
    ROW_STRIDE: tl.constexpr,
    offs_row,
    w_ptr,          # this gate's block of w_hh
    offs_j,
    mask_j,
    H,
    TRANSPOSED: tl.constexpr,
    H_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """acc + operand @ w-tile with both read per step in BLOCK_K slices: the path for weight
    slices too large to stay on chip (they are re-read from L2 every step).

    The slice loop is not software-pipelined (num_stages=1): Triton's pipeliner would turn the
    operand's loads into cp.async copies, and those under 16 bytes into cp.async.ca, which
    reads through this SM's L1, not coherent with the other programs' writes. The next slice
    is prefetched into registers instead (plain loads, the operand's with .cg) while the
    current one is multiplied.
    """
    a = load_operand(src_ptr, ROW_STRIDE, offs_row, 0, BLOCK_K, SPLIT_K)
    w = load_weight_tile(w_ptr, 0, offs_j, mask_j, H, TRANSPOSED, BLOCK_K, SPLIT_K)
    for k0 in tl.range(BLOCK_K, H_PAD, BLOCK_K, num_stages=1):
        a_next = load_operand(src_ptr, ROW_STRIDE, offs_row, k0, BLOCK_K, SPLIT_K)
        w_next = load_weight_tile(w_ptr, k0, offs_j, mask_j, H, TRANSPOSED, BLOCK_K, SPLIT_K)
        acc = product(a, w, acc, TF32, UPCAST, SPLIT_K)
        a = a_next
        w = w_next
    return product(a, w, acc, TF32, UPCAST, SPLIT_K)


@triton.jit
def step_time(s, T, REVERSE: tl.constexpr):
    """Time index of forward position s (the order in which the forward visits steps)."""
    if REVERSE:
        return T - 1 - s
    else:
        return s


@triton.jit
def row_lengths(lengths_ptr, offs_b, mask_b, T, HAS_LENGTHS: tl.constexpr):
    """[BLOCK_B] int32 sequence lengths, clamped to [0, T]; padding rows get 0 (never real)."""
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + offs_b, mask=mask_b, other=0).to(tl.int32)
        length = tl.minimum(tl.maximum(length, 0), T)
    else:
        length = tl.where(mask_b, T, 0)
    return length


@triton.jit
def is_first_step(t, length, REVERSE: tl.constexpr):
    """[BLOCK_B] whether step t is its sequence's first (h_prev is the initial state)."""
    if REVERSE:
        return t + 1 >= length
    else:
        return (t + tl.zeros_like(length)) == 0


@triton.jit
def prev_time(t, REVERSE: tl.constexpr):
    """Time step whose output is h_prev of step t (when t is not a sequence's first step)."""
    if REVERSE:
        return t + 1
    else:
        return t - 1


@triton.jit
def after_step_is_real(r, T, length, REVERSE: tl.constexpr):
    """[BLOCK_B, 1] whether the step the backward processed at position r - 1 (the step after
    that of position r, in the forward's order) is real for each row: the rows that add the
    product of its gate gradients with w_hh. At r = 0 there is none, and a padded step's
    gradients are zero, but zero times a NaN or inf of w_hh would be NaN, where torch.nn's
    packed sequences have no such row."""
    t_after = step_time(T - r, T, REVERSE)
    return ((r > 0) & (t_after < length))[:, None]


@triton.jit
def finishes(step_begin, step_end, T, SYNC: tl.constexpr):
    """Whether a backward launch applies the product of the last step's gate gradients after
    its loop: the launch that ends the sequence, or in the stepwise layout (SYNC 0 with the
    operand exchanged) the extra launch over the empty range [T, T) after the last step."""
    if SYNC == 0:
        return step_begin == T
    else:
        return step_end == T
