// One decoding step's attention on a CPU, in fp32, over a left-padded KV cache: tunesmith/models/attention.py.
//
// Written by hand because no maintained library does it for PyTorch on a CPU: SDPA's CPU flash kernel runs a
// decoding step (one query per row) at about half the memory bandwidth (its small per-block GEMMs), reads the
// positions of left padding like any others, and in bf16 is 4.5x slower again; IPEX, which had such a kernel, is
// Intel-only and no longer developed. Here each (row, KV head) task reads its keys and values once, for all the
// query heads that share them (GQA), and skips the masked positions: SmolLM2-135M's shapes, 60 rows × 500
// positions, 1.7 ms a layer against SDPA's 3.0 (2 threads, Zen 4); docs/benchmarks.md.
//
// qk: scores[r, h, g, l] = scale * <q[r, h, g, :], k[r, h, l, :]>, -inf where keep[r, l] is false.
// pv: out[r, h, g, :] = sum over kept l of p[r, h, g, l] * v[r, h, l, :].
// The softmax between them is PyTorch's. Everything is fp32; the keys' and values' last dimension is contiguous.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr float kMasked = -std::numeric_limits<float>::infinity();

template <int G>
void qk_task(const float* q, const float* k, const bool* keep, float* out, int64_t L, int64_t D, int64_t k_step,
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
      const float* kl = k + l * k_step;
      __m512 acc[G];
      for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
      for (int64_t c = 0; c < chunks; ++c) {
        const __m512 kc = _mm512_loadu_ps(kl + 16 * c);
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
    const float* kl = k + l * k_step;
    for (int g = 0; g < G; ++g) {
      float acc = 0.f;
      for (int64_t d = 0; d < D; ++d) acc += q[g * D + d] * kl[d];
      out[g * L + l] = acc * scale;
    }
  }
}

void check(const torch::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.dim() == dims && t.stride(-1) == 1,
              name, ": a CPU fp32 tensor of ", dims, " dimensions, its last one contiguous");
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

}  // namespace

torch::Tensor qk(torch::Tensor q, torch::Tensor k, torch::Tensor keep, double scale) {
  check(q, "q", 4);
  check(k, "k", 4);
  q = q.contiguous();
  const int64_t R = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3), L = k.size(2);
  TORCH_CHECK(k.size(0) == R && k.size(1) == H && k.size(3) == D, "k does not match q");
  const Keep m = keep_of(keep, R, L);
  auto out = torch::empty({R, H, G, L}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t k0 = k.stride(0), k1 = k.stride(1), k2 = k.stride(2);
  const float s = static_cast<float>(scale);
  at::parallel_for(0, R * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / H, h = t % H;
      const float* qt = qp + t * G * D;
      const float* kt = kp + r * k0 + h * k1;
      const bool* mt = m.data + r * m.row_step;
      const int64_t m1 = m.position_step;
      float* ot = op + t * G * L;
      switch (G) {
        case 1: qk_task<1>(qt, kt, mt, ot, L, D, k2, m1, s); break;
        case 2: qk_task<2>(qt, kt, mt, ot, L, D, k2, m1, s); break;
        case 3: qk_task<3>(qt, kt, mt, ot, L, D, k2, m1, s); break;
        case 4: qk_task<4>(qt, kt, mt, ot, L, D, k2, m1, s); break;
        default:
          for (int64_t g = 0; g < G; ++g) qk_task<1>(qt + g * D, kt, mt, ot + g * L, L, D, k2, m1, s);
      }
    }
  });
  return out;
}

torch::Tensor pv(torch::Tensor p, torch::Tensor v, torch::Tensor keep) {
  check(p, "p", 4);
  check(v, "v", 4);
  p = p.contiguous();
  const int64_t R = p.size(0), H = p.size(1), G = p.size(2), L = p.size(3), D = v.size(3);
  TORCH_CHECK(v.size(0) == R && v.size(1) == H && v.size(2) == L, "v does not match p");
  const Keep m = keep_of(keep, R, L);
  auto out = torch::empty({R, H, G, D}, p.options());
  const float *pp = p.data_ptr<float>(), *vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t v0 = v.stride(0), v1 = v.stride(1), v2 = v.stride(2);
  at::parallel_for(0, R * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(G * D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / H, h = t % H;
      const float* pt = pp + t * G * L;
      const float* vt = vp + r * v0 + h * v1;
      const bool* mt = m.data + r * m.row_step;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t l = 0; l < L; ++l) {
        if (!mt[l * m.position_step]) continue;  // a masked position's weight is 0: its value is not read
        const float* vl = vt + l * v2;
        for (int64_t g = 0; g < G; ++g) {
          const float w = pt[g * L + l];
          float* a = acc.data() + g * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += w * vl[d];
        }
      }
      std::copy(acc.begin(), acc.end(), op + t * G * D);
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qk", &qk, "scaled scores of each row's queries against its kept keys (-inf elsewhere)");
  m.def("pv", &pv, "each row's weighted sum of its kept values");
}
