// The persistent/fallback choice and the persistent partition (see plan.h).
#include "cuda/plan.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <optional>

namespace fused_rnn::cuda {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

Engine engine_for(StorageType storage, bool allow_tf32) {
  switch (storage) {
    case StorageType::kBFloat16:
      return Engine::kWmmaBF16;
    case StorageType::kFloat16:
      return Engine::kWmmaF16;
    default:
      return allow_tf32 ? Engine::kWmmaTF32 : Engine::kFFMA;
  }
}

// Weight rows of a block owning `units` hidden units.
int64_t rows_for(const PlanRequest& r, int64_t units) {
  return r.backward ? units : gates_of(r.cell) * units;
}

// Split-K factor: enough (m-tile, n-tile, split) items to give every warp one, and no more
// splits than K steps in a chunk. Tiles are 16 x 16 (wmma) or 16 batch rows x 4 rows (FFMA).
int k_splits_for(Engine engine, int64_t batch_tile, int64_t rows_pad, int64_t k_chunk) {
  const EngineShape shape = engine_shape(engine);
  const int64_t tiles = (batch_tile / 16) * (rows_pad / shape.row_granule);
  const int64_t k_steps = ceil_div(k_chunk, shape.k_step);
  const int64_t splits = std::min<int64_t>({ceil_div(kBlockWarps, tiles), kMaxKSplits, k_steps});
  return static_cast<int>(std::max<int64_t>(1, splits));
}

// The layout of a block owning `units` hidden units, or nothing when its weight slice leaves too
// little shared memory for a 16-row batch tile and a 16-column K chunk.
std::optional<PersistentPlan> layout_for(const PlanRequest& r, Engine engine, int64_t units) {
  const EngineShape shape = engine_shape(engine);
  const int64_t G = gates_of(r.cell);
  const int64_t K = r.backward ? G * r.H : r.P;
  const int64_t pad = 16 / shape.operand_bytes;  // 16 bytes of row padding: no bank conflicts
  const int64_t k_pad = round_up(K, 16);
  const int64_t rows_pad = round_up(rows_for(r, units), shape.row_granule);
  const int64_t ld_w = k_pad + pad;
  const int64_t w_bytes = round_up(rows_pad * ld_w * shape.operand_bytes, kSmemAlign);
  const int64_t ld_acc = rows_pad + 4;
  const int64_t optin = r.device.smem_per_block_optin;

  // The largest batch tile (then the largest K chunk) that fits next to the weight slice.
  int64_t batch_tile = std::min<int64_t>(round_up(r.B, 16), kMaxBatchTile);
  int64_t max_chunk = 0;
  for (; batch_tile >= 16; batch_tile -= 16) {
    // Splits as for a full-K chunk; a smaller chunk can only need fewer.
    const int splits = k_splits_for(engine, batch_tile, rows_pad, k_pad);
    const int64_t acc_bytes = round_up(splits * batch_tile * ld_acc * 4, kSmemAlign);
    const int64_t left = optin - w_bytes - acc_bytes - kSmemAlign;  // slack for A's rounding
    if (left <= 0) continue;
    max_chunk = (left / (batch_tile * shape.operand_bytes) - pad) / 16 * 16;
    if (max_chunk >= 16) break;
  }
  if (batch_tile < 16 || max_chunk < 16) return std::nullopt;

  // Equal chunks, each a multiple of 16 and no larger than max_chunk.
  const int64_t n_chunks = ceil_div(k_pad, std::min(max_chunk, k_pad));
  const int64_t k_chunk = round_up(ceil_div(k_pad, n_chunks), 16);
  const int k_splits = k_splits_for(engine, batch_tile, rows_pad, k_chunk);
  const int64_t ld_a = k_chunk + pad;
  const int64_t a_bytes = round_up(batch_tile * ld_a * shape.operand_bytes, kSmemAlign);
  const int64_t acc_bytes = round_up(k_splits * batch_tile * ld_acc * 4, kSmemAlign);

  PersistentPlan p{};
  p.engine = engine;
  p.units_per_block = static_cast<int>(units);
  p.num_blocks = static_cast<int>(ceil_div(r.H, units));
  p.rows_pad = static_cast<int>(rows_pad);
  p.k_valid = static_cast<int>(K);
  p.k_pad = static_cast<int>(k_pad);
  p.k_chunk = static_cast<int>(k_chunk);
  p.batch_tile = static_cast<int>(batch_tile);
  p.k_splits = k_splits;
  p.ld_w = static_cast<int>(ld_w);
  p.ld_a = static_cast<int>(ld_a);
  p.ld_acc = static_cast<int>(ld_acc);
  p.off_a = w_bytes;
  p.off_acc = w_bytes + a_bytes;
  p.smem_bytes = w_bytes + a_bytes + acc_bytes;
  TORCH_INTERNAL_ASSERT(p.smem_bytes <= optin, "persistent plan exceeds shared memory");
  return p;
}

}  // namespace

int64_t weight_slice_bytes(const PersistentPlan& p) {
  return round_up(int64_t{p.rows_pad} * p.ld_w * engine_shape(p.engine).operand_bytes,
                  kSmemAlign);
}

Plan plan_recurrence(const PlanRequest& r) {
  Plan plan{Algo::kFallback, PersistentPlan{}, ""};
  if (r.algo == AlgoOverride::kFallback) {
    plan.reason = "FUSED_RNN_CUDA_ALGO=fallback";
    return plan;
  }
  // The persistent kernel cannot run this call: the fallback does, unless it was forced.
  auto fallback = [&](const std::string& why) {
    TORCH_CHECK(r.algo != AlgoOverride::kPersistent,
                "fused_rnn: FUSED_RNN_CUDA_ALGO=persistent, but the persistent kernel cannot run "
                "this call: ",
                why);
    plan.reason = why;
    return plan;
  };
  if (r.projection) return fallback("an LSTM with a projection (w_hr) runs per step");
  if (r.storage == StorageType::kFloat64) return fallback("float64 runs per step");
  if (r.device.cc_major < 8) return fallback("the persistent kernels need compute capability 8.0+");
  if (r.B <= 0 || r.H <= 0) return fallback("empty batch or hidden size");
  if (r.P != r.H) return fallback("w_hh has P != H columns without a projection");
  if (r.H * gates_of(r.cell) > (int64_t{1} << 30)) return fallback("hidden size beyond 2^30 / G");

  const int64_t G = gates_of(r.cell);
  // Fewest units per block: one block per multiprocessor.
  const int64_t min_units = ceil_div(r.H, std::max(1, r.device.sm_count));
  // TF32 pads the slice to 16-row tiles; when that does not fit, FFMA's 4-row tiles may.
  const Engine preferred = engine_for(r.storage, r.allow_tf32);
  const bool ffma_too = preferred == Engine::kWmmaTF32;
  for (const Engine engine : {preferred, ffma_too ? Engine::kFFMA : preferred}) {
    // Preferred: as many units as fill the slice's padded product tiles. A block with 3 LSTM
    // units costs the same 16-row tile as one with 4, and fewer blocks stage less of h from L2
    // per step; when that slice does not fit, the fewest units (rows padded with zeros).
    const int64_t rows_pad = round_up(rows_for(r, min_units), engine_shape(engine).row_granule);
    const int64_t filled_units = std::min(r.H, r.backward ? rows_pad : rows_pad / G);
    for (const int64_t units : {filled_units, min_units}) {
      if (auto p = layout_for(r, engine, units)) {
        plan.algo = Algo::kPersistent;
        plan.persistent = *p;
        return plan;
      }
    }
  }
  const int64_t K = r.backward ? G * r.H : r.P;
  return fallback("the weight slice of " + std::to_string(min_units) + " hidden units per block (" +
                  std::to_string(rows_for(r, min_units) * K *
                                 engine_shape(preferred).operand_bytes) +
                  " bytes) leaves too little of the " +
                  std::to_string(r.device.smem_per_block_optin) +
                  " bytes of shared memory of a block");
}

AlgoOverride parse_algo_override(const std::string& value) {
  if (value.empty() || value == "auto") return AlgoOverride::kAuto;
  if (value == "persistent") return AlgoOverride::kPersistent;
  if (value == "fallback") return AlgoOverride::kFallback;
  TORCH_CHECK(false, "fused_rnn: FUSED_RNN_CUDA_ALGO must be auto, persistent or fallback, got '",
              value, "'");
}

AlgoOverride algo_override_from_env() {
  const char* env = std::getenv("FUSED_RNN_CUDA_ALGO");
  return parse_algo_override(env == nullptr ? "" : env);
}

}  // namespace fused_rnn::cuda
