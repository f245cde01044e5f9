// One decoding step's attention on a CPU, in fp32, over a left-padded KV cache, and a prompt's attention (its
// prefill, further down): tunesmith/models/attention.py.
//
// Written by hand because no maintained library does it for PyTorch on a CPU: SDPA's CPU flash kernel runs a
// decoding step (one query per row) at about half the memory bandwidth (its small per-block GEMMs), reads the
// positions of left padding like any others, and in bf16 is 4.5x slower again; IPEX, which had such a kernel, is
// Intel-only and no longer developed. Here each (row, KV head) task reads its keys and values once, for all the
// query heads that share them (GQA), and skips the masked positions: SmolLM2-135M's shapes, 60 rows × 500
// positions, 1.7 ms a layer against SDPA's 3.0 (2 threads, Zen 4); docs/benchmarks.md.
//
// A step (`step`, at the end) does three stages per task, the scores staying in cache between them:
// qk: scores[r, h, g, l] = scale * <q[r, h, g, :], k[r, h, l, :]>, -inf where keep[r, l] is false;
// softmax over l (the kept positions);
// pv: out[r, h, g, :] = sum over kept l of p[r, h, g, l] * v[r, h, l, :].
// Queries, scores and sums are fp32; the keys and values are fp32 or bf16 (a cache held in bf16, half the bytes a
// step reads: the step is bound by memory), each bf16 value widened exactly to fp32 as it is loaded. Their last
// dimension is contiguous.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr float kMasked = -std::numeric_limits<float>::infinity();

#ifdef __AVX512F__
// 16 keys' or values' elements as fp32 (bf16 widened exactly: its bits are the high half of the fp32's).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
#endif

template <int G, typename T>
void qk_task(const float* q, const T* k, const bool* keep, float* out, int64_t L, int64_t D, int64_t k_step,
             int64_t keep_step, float scale) {
#ifdef __AVX512F__
  if (D % 16 == 0 && D <= 256) {  // the queries stay in registers; each key is loaded once for the G queries
    const int64_t chunks = D / 16;
    __m512 qv[G][16];
    for (int g = 0; g < G; ++g)
      for (int64_t c = 0; c < chunks; ++c) qv[g][c] = _mm512_loadu_ps(q + g * D + 16 * c);
    for (int64_t l = 0; l < L; ++l) {
      if (!keep[l * keep_step]) {
        for (int g = 0; g < G; ++g) out[g * L + l] = kMasked;
        continue;
      }
      const T* kl = k + l * k_step;
      __m512 acc[G];
      for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
      for (int64_t c = 0; c < chunks; ++c) {
        const __m512 kc = load16(kl + 16 * c);
        for (int g = 0; g < G; ++g) acc[g] = _mm512_fmadd_ps(qv[g][c], kc, acc[g]);
      }
      for (int g = 0; g < G; ++g) out[g * L + l] = _mm512_reduce_add_ps(acc[g]) * scale;
    }
    return;
  }
#endif
  for (int64_t l = 0; l < L; ++l) {
    if (!keep[l * keep_step]) {
      for (int g = 0; g < G; ++g) out[g * L + l] = kMasked;
      continue;
    }
    const T* kl = k + l * k_step;
    for (int g = 0; g < G; ++g) {
      float acc = 0.f;
      for (int64_t d = 0; d < D; ++d) acc += q[g * D + d] * static_cast<float>(kl[d]);
      out[g * L + l] = acc * scale;
    }
  }
}

void check(const torch::Tensor& t, const char* name, int64_t dims, bool bf16_too = false) {
  const bool dtype = t.scalar_type() == torch::kFloat32 || (bf16_too && t.scalar_type() == torch::kBFloat16);
  TORCH_CHECK(t.device().is_cpu() && dtype && t.dim() == dims && t.stride(-1) == 1, name, ": a CPU ",
              bf16_too ? "fp32 or bf16" : "fp32", " tensor of ", dims, " dimensions, its last one contiguous");
}

// The keep mask of (rows, positions) and its strides: both passes read it the same way.
struct Keep {
  const bool* data;
  int64_t row_step, position_step;
};

Keep keep_of(const torch::Tensor& keep, int64_t rows, int64_t positions) {
  TORCH_CHECK(keep.scalar_type() == torch::kBool && keep.dim() == 2 && keep.size(0) == rows &&
                  keep.size(1) == positions,
              "keep: (rows, positions) bool");
  return {keep.data_ptr<bool>(), keep.stride(0), keep.stride(1)};
}

// One (row, KV head) task of qk: the G × L scores of its G queries (-inf where masked).
template <typename T>
void qk_of(const float* qt, const T* kt, const bool* mt, float* ot, int64_t G, int64_t L, int64_t D, int64_t k2,
           int64_t m1, float s) {
  switch (G) {
    case 1: qk_task<1>(qt, kt, mt, ot, L, D, k2, m1, s); break;
    case 2: qk_task<2>(qt, kt, mt, ot, L, D, k2, m1, s); break;
    case 3: qk_task<3>(qt, kt, mt, ot, L, D, k2, m1, s); break;
    case 4: qk_task<4>(qt, kt, mt, ot, L, D, k2, m1, s); break;
    default:
      for (int64_t g = 0; g < G; ++g) qk_task<1>(qt + g * D, kt, mt, ot + g * L, L, D, k2, m1, s);
  }
}

#ifdef __AVX512F__
// pv_task for G query heads and head dim 16 × C, the G × C sums held in registers (through memory, the loads and
// stores of the sums made pv half as fast as qk over the same bytes: 1.8 against 1.1 ms a layer at 100 rows × 700
// positions, bf16 cache, 2 threads).
template <int G, int C, typename T>
void pv_registers(const float* pt, const T* vt, const bool* mt, int64_t m1, float* acc, int64_t L, int64_t v2) {
  __m512 sum[G][C];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) sum[g][c] = _mm512_setzero_ps();
  for (int64_t l = 0; l < L; ++l) {
    if (!mt[l * m1]) continue;
    const T* vl = vt + l * v2;
    __m512 w[G];
    for (int g = 0; g < G; ++g) w[g] = _mm512_set1_ps(pt[g * L + l]);
    for (int c = 0; c < C; ++c) {
      const __m512 vc = load16(vl + 16 * c);
      for (int g = 0; g < G; ++g) sum[g][c] = _mm512_fmadd_ps(w[g], vc, sum[g][c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + g * 16 * C + 16 * c, sum[g][c]);
}

template <int G, typename T>
bool pv_registers_of(const float* pt, const T* vt, const bool* mt, int64_t m1, float* acc, int64_t L, int64_t D,
                     int64_t v2) {
  switch (D) {
    case 32: pv_registers<G, 2>(pt, vt, mt, m1, acc, L, v2); return true;
    case 64: pv_registers<G, 4>(pt, vt, mt, m1, acc, L, v2); return true;
    case 128: pv_registers<G, 8>(pt, vt, mt, m1, acc, L, v2); return true;
    default: return false;
  }
}
#endif

// One (row, KV head) task of pv: acc (G × D) = the weighted sum of its kept values.
template <typename T>
void pv_task(const float* pt, const T* vt, const bool* mt, int64_t m1, float* acc, int64_t G, int64_t L, int64_t D,
             int64_t v2) {
#ifdef __AVX512F__
  switch (G) {  // the shapes of common models: sums in registers
    case 1: if (pv_registers_of<1>(pt, vt, mt, m1, acc, L, D, v2)) return; break;
    case 2: if (pv_registers_of<2>(pt, vt, mt, m1, acc, L, D, v2)) return; break;
    case 3: if (pv_registers_of<3>(pt, vt, mt, m1, acc, L, D, v2)) return; break;
    case 4: if (pv_registers_of<4>(pt, vt, mt, m1, acc, L, D, v2)) return; break;
    default: break;
  }
#endif
  std::fill(acc, acc + G * D, 0.f);
  for (int64_t l = 0; l < L; ++l) {
    if (!mt[l * m1]) continue;  // a masked position's weight is 0: its value is not read
    const T* vl = vt + l * v2;
#ifdef __AVX512F__
    if (D % 16 == 0) {  // each value loaded (and widened) once for the G queries
      for (int64_t c = 0; c < D; c += 16) {
        const __m512 vc = load16(vl + c);
        for (int64_t g = 0; g < G; ++g) {
          float* a = acc + g * D + c;
          _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(pt[g * L + l]), vc, _mm512_loadu_ps(a)));
        }
      }
      continue;
    }
#endif
    for (int64_t g = 0; g < G; ++g) {
      const float w = pt[g * L + l];
      float* a = acc + g * D;
      for (int64_t d = 0; d < D; ++d) a[d] += w * static_cast<float>(vl[d]);
    }
  }
}

}  // namespace

// ---- the prompt's attention (prefill; eval's reference scoring), under bf16 autocast ----
//
// Written by hand for the same reason: SDPA's CPU flash kernel attends a prompt at about 50 GFLOP/s in bf16 on
// these shapes (2 rows × 9 heads × 450 positions, head dim 64: 9.3 ms a layer on 2 Zen 4 threads, an eighth of the
// matmul peak), and it was a seventh of the DBLP-QuAD eval. Here each task takes one (row, KV head) and 16 query
// positions, i.e. the 16 × G query vectors that share those keys; tiles of 4 query vectors are scored against 32
// keys at a time from a transposed copy of the keys (FMAs over the head dimension, keys across the lanes), only
// over the span of keys the mask keeps for them (left padding and the causal future are skipped), then softmax in
// fp32 and the weighted sum of the values, each value vector read once for the 4 queries.
//
// prefill: q (B, Hq, L, D) fp32, k and v (B, Hkv, S, D), each fp32 or bf16, keep (B or 1, L, S) bool; returns
// out (B, L, Hq, D) fp32 = softmax over kept s of scale * <q, k_s>, weighting v_s; 0 for a query that keeps no key.
// q, k and v are rounded to bf16 first, as autocast rounds them for SDPA; the sums are fp32.

namespace {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// e^x for x <= 0 (scores minus their maximum): Cephes' expf (x = n ln 2 + r, e^r = 1 + r + r² P(r)), scaled by 2^n
// with scalef. Relative error about 1e-7.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(y, n);
}

inline __mmask16 lanes(int64_t n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1); }

inline __mmask16 kept(const bool* keep, int64_t n) {  // the keep bytes of up to 16 positions as a lane mask
  const __m128i bytes = _mm_maskz_loadu_epi8(lanes(n), keep);
  return _mm_test_epi8_mask(bytes, bytes);
}
#endif

inline float bf16_rounded(float x) {  // to the nearest bf16, ties to even, as autocast rounds for SDPA (finite x)
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&x, &bits, 4);
  return x;
}

// Two values already rounded to bf16, as one dword of a bf16 pair (the first in the low half), as the dot-product
// instruction reads them.
inline uint32_t bf16_pair(float first, float second) {
  uint32_t a, b;
  std::memcpy(&a, &first, 4);
  std::memcpy(&b, &second, 4);
  return (a >> 16) | (b & 0xFFFF0000u);
}

// Whether the keys go to the scores as bf16 pairs (CPUs with AVX512-BF16, head dims the vector path takes).
bool paired_keys(int64_t D) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512BF16__)
  return D % 16 == 0 && D <= 128;
#else
  (void)D;
  return false;
#endif
}

constexpr int kTile = 4;       // query vectors scored together
constexpr int64_t kBlock = 16;  // query positions per task

struct Span {
  int64_t lo, hi;  // the first kept key and one past the last
};

Span span_of(const bool* keep, int64_t S) {
  int64_t lo = 0, hi = S;
  while (lo < S && !keep[lo]) ++lo;
  while (hi > lo && !keep[hi - 1]) --hi;
  return {lo, hi};
}

// One tile: n (<= kTile) query vectors q[t] with keep rows keep[t], written to out[t] (D floats each).
void prefill_tile(const float* const* q, const bool* const* keep, const Span* spans, float* const* out, int n,
                  const float* kt, const float* v, int64_t S, int64_t D, float scale, std::vector<float>& buffer) {
  int64_t lo = S, hi = 0;
  for (int t = 0; t < n; ++t) {
    lo = std::min(lo, spans[t].lo);
    hi = std::max(hi, spans[t].hi);
  }
  for (int t = 0; t < n; ++t) std::fill(out[t], out[t] + D, 0.f);
  if (hi <= lo) return;
  const int64_t W = hi - lo;
  buffer.resize(kTile * W);
  float* sc[kTile];
  for (int t = 0; t < kTile; ++t) sc[t] = buffer.data() + t * W;
  float total[kTile] = {0.f, 0.f, 0.f, 0.f};
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  if (D % 16 == 0 && D <= 128) {
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t s0 = lo; s0 < hi; s0 += 32) {  // scores: 4 queries × 32 keys a step over the head dimension
      const __mmask16 m0 = lanes(hi - s0), m1 = lanes(hi - s0 - 16);
      __m512 acc[kTile][2];
      for (int t = 0; t < kTile; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
#ifdef __AVX512BF16__
      // keys in bf16 pairs (`paired`): each instruction takes 2 dimensions of 16 keys; the products of bf16 values
      // are exact and summed in fp32, as the fp32 loop below sums them (in another order)
      const uint32_t* pairs = reinterpret_cast<const uint32_t*>(kt);
      for (int64_t d = 0; d < D / 2; ++d) {
        const uint32_t* row = pairs + d * S + s0;
        const __m512bh k0 = (__m512bh)_mm512_maskz_loadu_epi32(m0, row);
        const __m512bh k1 = (__m512bh)_mm512_maskz_loadu_epi32(m1, row + 16);
        for (int t = 0; t < n; ++t) {
          const __m512bh qd = (__m512bh)_mm512_set1_epi32(static_cast<int>(bf16_pair(q[t][2 * d], q[t][2 * d + 1])));
          acc[t][0] = _mm512_dpbf16_ps(acc[t][0], qd, k0);
          acc[t][1] = _mm512_dpbf16_ps(acc[t][1], qd, k1);
        }
      }
#else
      for (int64_t d = 0; d < D; ++d) {
        const float* row = kt + d * S + s0;
        const __m512 k0 = _mm512_maskz_loadu_ps(m0, row), k1 = _mm512_maskz_loadu_ps(m1, row + 16);
        for (int t = 0; t < n; ++t) {
          const __m512 qd = _mm512_set1_ps(q[t][d]);
          acc[t][0] = _mm512_fmadd_ps(qd, k0, acc[t][0]);
          acc[t][1] = _mm512_fmadd_ps(qd, k1, acc[t][1]);
        }
      }
#endif
      for (int t = 0; t < n; ++t) {
        _mm512_mask_storeu_ps(sc[t] + (s0 - lo), m0, _mm512_mul_ps(acc[t][0], vscale));
        _mm512_mask_storeu_ps(sc[t] + (s0 - lo) + 16, m1, _mm512_mul_ps(acc[t][1], vscale));
      }
    }
    const __m512 masked = _mm512_set1_ps(kMasked);
    for (int t = 0; t < n; ++t) {  // softmax weights, 0 where the key is not kept
      if (spans[t].hi <= spans[t].lo) {
        std::fill(sc[t], sc[t] + W, 0.f);
        continue;
      }
      __m512 top = masked;
      for (int64_t s = lo; s < hi; s += 16) {
        const __mmask16 m = kept(keep[t] + s, hi - s);
        top = _mm512_mask_max_ps(top, m, top, _mm512_maskz_loadu_ps(lanes(hi - s), sc[t] + (s - lo)));
      }
      const __m512 peak = _mm512_set1_ps(_mm512_reduce_max_ps(top));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t s = lo; s < hi; s += 16) {
        const __mmask16 all = lanes(hi - s), m = kept(keep[t] + s, hi - s);
        const __m512 e = _mm512_maskz_mov_ps(m, exp_nonpositive(_mm512_sub_ps(
            _mm512_maskz_loadu_ps(all, sc[t] + (s - lo)), peak)));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(sc[t] + (s - lo), all, e);
      }
      total[t] = _mm512_reduce_add_ps(sum);
    }
    const int64_t chunks = D / 16;  // weighted values: each value vector loaded once for the tile's queries
    __m512 acc[kTile][8];
    for (int t = 0; t < kTile; ++t)
      for (int64_t c = 0; c < chunks; ++c) acc[t][c] = _mm512_setzero_ps();
    for (int64_t s = lo; s < hi; ++s) {
      const float* vs = v + s * D;
      for (int64_t c = 0; c < chunks; ++c) {
        const __m512 vc = _mm512_loadu_ps(vs + 16 * c);
        for (int t = 0; t < n; ++t) acc[t][c] = _mm512_fmadd_ps(_mm512_set1_ps(sc[t][s - lo]), vc, acc[t][c]);
      }
    }
    for (int t = 0; t < n; ++t) {
      if (total[t] <= 0.f) continue;
      const __m512 inv = _mm512_set1_ps(1.f / total[t]);
      for (int64_t c = 0; c < chunks; ++c) _mm512_storeu_ps(out[t] + 16 * c, _mm512_mul_ps(acc[t][c], inv));
    }
    return;
  }
#endif
  for (int t = 0; t < n; ++t) {  // portable loops: the same sums, one query at a time
    float top = kMasked;
    for (int64_t s = lo; s < hi; ++s) {
      if (!keep[t][s]) continue;
      float dot = 0.f;
      for (int64_t d = 0; d < D; ++d) dot += q[t][d] * kt[d * S + s];
      sc[t][s - lo] = dot * scale;
      top = std::max(top, sc[t][s - lo]);
    }
    for (int64_t s = lo; s < hi; ++s) {
      sc[t][s - lo] = keep[t][s] ? std::exp(sc[t][s - lo] - top) : 0.f;
      total[t] += sc[t][s - lo];
    }
    if (total[t] <= 0.f) continue;
    for (int64_t s = lo; s < hi; ++s)
      for (int64_t d = 0; d < D; ++d) out[t][d] += sc[t][s - lo] * v[s * D + d];
    for (int64_t d = 0; d < D; ++d) out[t][d] /= total[t];
  }
}

}  // namespace

namespace {

// The keys of each (row, KV head) transposed to (D, S), or its values as (S, D), rounded to bf16 and held in fp32,
// written one contiguous output row at a time (transposed, the reads stride over a head's keys, which stay in cache).
template <typename T>
void pack(const torch::Tensor& x, float* to, bool transposed) {
  const int64_t B = x.size(0), H = x.size(1), S = x.size(2), D = x.size(3), x2 = x.stride(2);
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* head = xp + (t / H) * x.stride(0) + (t % H) * x.stride(1);
      float* packed = to + t * S * D;
      if (transposed && paired_keys(D)) {  // (D / 2, S) dwords, each a bf16 pair of dimensions 2d and 2d + 1
        uint32_t* dwords = reinterpret_cast<uint32_t*>(packed);
        for (int64_t d = 0; d < D / 2; ++d)
          for (int64_t s = 0; s < S; ++s)
            dwords[d * S + s] = bf16_pair(bf16_rounded(static_cast<float>(head[s * x2 + 2 * d])),
                                          bf16_rounded(static_cast<float>(head[s * x2 + 2 * d + 1])));
      } else if (transposed) {
        for (int64_t d = 0; d < D; ++d)
          for (int64_t s = 0; s < S; ++s) packed[d * S + s] = bf16_rounded(static_cast<float>(head[s * x2 + d]));
      } else {
        for (int64_t s = 0; s < S; ++s)
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) packed[s * D + d] = bf16_rounded(static_cast<float>(head[s * x2 + d]));
      }
    }
  });
}

void pack_any(const torch::Tensor& x, torch::Tensor& to, bool transposed) {
  if (x.scalar_type() == torch::kFloat32)
    pack<float>(x, to.data_ptr<float>(), transposed);
  else
    pack<c10::BFloat16>(x, to.data_ptr<float>(), transposed);
}

}  // namespace

torch::Tensor prefill(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor keep, double scale) {
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == torch::kFloat32 && q.dim() == 4 && q.stride(-1) == 1,
              "q: a CPU fp32 tensor (B, Hq, L, D), its last dimension contiguous");
  for (auto* t : {&k, &v})
    TORCH_CHECK(t->dim() == 4 && t->sizes() == k.sizes() && t->stride(-1) == 1 &&
                    (t->scalar_type() == torch::kFloat32 || t->scalar_type() == torch::kBFloat16),
                "k, v: (B, Hkv, S, D), fp32 or bf16, their last dimension contiguous");
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0 && k.size(0) == B && k.size(3) == D, "k does not match q");
  TORCH_CHECK(keep.scalar_type() == torch::kBool && keep.dim() == 3 && (keep.size(0) == B || keep.size(0) == 1) &&
                  keep.size(1) == L && keep.size(2) == S && keep.stride(2) == 1,
              "keep: (B or 1, L, S) bool, its last dimension contiguous");
  auto kt = torch::empty({B, Hkv, D, S}, q.options()), vb = torch::empty({B, Hkv, S, D}, q.options());
  pack_any(k, kt, true);
  pack_any(v, vb, false);
  const int64_t G = Hq / Hkv, blocks = (L + kBlock - 1) / kBlock;
  const int64_t keep_row = keep.size(0) == 1 ? 0 : keep.stride(0), keep_step = keep.stride(1);
  const int64_t q0 = q.stride(0), q1 = q.stride(1), q2 = q.stride(2);
  auto out = torch::empty({B, L, Hq, D}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = kt.data_ptr<float>(), *vp = vb.data_ptr<float>();
  const bool* mp = keep.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * Hkv * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer, rounded(kTile * D);
    std::vector<Span> spans(kBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (Hkv * blocks), h = (task / blocks) % Hkv, i0 = (task % blocks) * kBlock;
      const int64_t i1 = std::min(L, i0 + kBlock);
      for (int64_t i = i0; i < i1; ++i) spans[i - i0] = span_of(mp + b * keep_row + i * keep_step, S);
      const float* kth = kp + (b * Hkv + h) * D * S;
      const float* vh = vp + (b * Hkv + h) * S * D;
      const float* qs[kTile];
      const bool* ks[kTile];
      Span ss[kTile];
      float* os[kTile];
      int n = 0;
      for (int64_t i = i0; i < i1; ++i) {  // query vectors in (position, head) order: a tile's spans are close
        for (int64_t g = 0; g < G; ++g) {
          const int64_t head = h * G + g;
          const float* qv = qp + b * q0 + head * q1 + i * q2;
          float* qr = rounded.data() + n * D;
          for (int64_t d = 0; d < D; ++d) qr[d] = bf16_rounded(qv[d]);
          qs[n] = qr;
          ks[n] = mp + b * keep_row + i * keep_step;
          ss[n] = spans[i - i0];
          os[n] = op + ((b * L + i) * Hq + head) * D;
          if (++n == kTile) {
            prefill_tile(qs, ks, ss, os, n, kth, vh, S, D, sc, buffer);
            n = 0;
          }
        }
      }
      if (n > 0) prefill_tile(qs, ks, ss, os, n, kth, vh, S, D, sc, buffer);
    }
  });
  return out;
}

// ---- a decoding step: scores, softmax and the values' weighted sum in one pass per (row, KV head) ----

namespace {

// Each of the G rows of scores (L each, -inf where masked) made softmax weights in place, 0 where masked (a row
// that keeps nothing is left as it is: its weights are never read). As PyTorch's softmax: e^(x - max) over the sum.
void softmax_rows(float* p, int64_t G, int64_t L) {
  for (int64_t g = 0; g < G; ++g) {
    float* row = p + g * L;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    const __m512 masked = _mm512_set1_ps(kMasked);
    __m512 top = masked;
    for (int64_t l = 0; l < L; l += 16) top = _mm512_max_ps(top, _mm512_mask_loadu_ps(masked, lanes(L - l), row + l));
    const float m = _mm512_reduce_max_ps(top);
    if (m == kMasked) continue;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t l = 0; l < L; l += 16) {
      const __mmask16 n = lanes(L - l);
      const __m512 x = _mm512_mask_loadu_ps(masked, n, row + l);
      const __mmask16 live = _mm512_cmp_ps_mask(x, masked, _CMP_NEQ_OQ);
      const __m512 e = _mm512_maskz_mov_ps(live, exp_nonpositive(_mm512_sub_ps(x, _mm512_set1_ps(m))));
      sum = _mm512_add_ps(sum, e);
      _mm512_mask_storeu_ps(row + l, n, e);
    }
    const __m512 scale = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
    for (int64_t l = 0; l < L; l += 16) {
      const __mmask16 n = lanes(L - l);
      _mm512_mask_storeu_ps(row + l, n, _mm512_mul_ps(_mm512_maskz_loadu_ps(n, row + l), scale));
    }
#else
    float m = kMasked;
    for (int64_t l = 0; l < L; ++l) m = std::max(m, row[l]);
    if (m == kMasked) continue;
    float sum = 0.f;
    for (int64_t l = 0; l < L; ++l) sum += (row[l] = row[l] == kMasked ? 0.f : std::exp(row[l] - m));
    for (int64_t l = 0; l < L; ++l) row[l] /= sum;
#endif
  }
}

template <typename TK, typename TV>
void step_all(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const Keep& m, torch::Tensor& out,
              float s) {
  const int64_t R = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3), L = k.size(2);
  const float* qp = q.data_ptr<float>();
  const TK* kp = k.data_ptr<TK>();
  const TV* vp = v.data_ptr<TV>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, R * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(G * L);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / H, h = t % H;
      const bool* mt = m.data + r * m.row_step;
      qk_of(qp + t * G * D, kp + r * k.stride(0) + h * k.stride(1), mt, p.data(), G, L, D, k.stride(2),
            m.position_step, s);
      softmax_rows(p.data(), G, L);
      pv_task(p.data(), vp + r * v.stride(0) + h * v.stride(1), mt, m.position_step, op + t * G * D, G, L, D,
              v.stride(2));
    }
  });
}

template <typename TK>
void step_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const Keep& m, torch::Tensor& out,
             float s) {
  if (v.scalar_type() == torch::kBFloat16)
    step_all<TK, c10::BFloat16>(q, k, v, m, out, s);
  else
    step_all<TK, float>(q, k, v, m, out, s);
}

}  // namespace

// step: q (R, Hkv, G, D) fp32, the G query heads of each KV head; k and v (R, Hkv, L, D), fp32 or bf16, read by
// their strides; keep (R, L) bool. Returns (R, Hkv, G, D) fp32: softmax over kept l of scale * <q, k_l>, weighting
// v_l; 0 for a row that keeps nothing. The scores of one task stay in cache between its three stages: as three
// PyTorch calls (scores, softmax, values) the scores went out to memory and back, and each call cost its overhead
// at each of 30 layers of each token.
torch::Tensor step(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor keep, double scale) {
  check(q, "q", 4);
  check(k, "k", 4, true);
  check(v, "v", 4, true);
  const int64_t R = q.size(0), H = q.size(1), L = k.size(2);
  TORCH_CHECK(k.size(0) == R && k.size(1) == H && k.size(3) == q.size(3) && v.sizes() == k.sizes(),
              "k and v: (rows, KV heads, positions, head dim) as q");
  const Keep m = keep_of(keep, R, L);
  const torch::Tensor qc = q.contiguous();
  auto out = torch::empty(q.sizes(), q.options());
  const float s = static_cast<float>(scale);
  if (k.scalar_type() == torch::kBFloat16)
    step_of<c10::BFloat16>(qc, k, v, m, out, s);
  else
    step_of<float>(qc, k, v, m, out, s);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, "a decoding step's attention: each row's queries over its kept keys and values, in fp32");
  m.def("prefill", &prefill, "a prompt's attention: each query over the keys it keeps, in fp32");
}
