// The native engine's compute kernels: products that read the kept rows of a weight in place through an index
// list, and the LSTM cell's fused pointwise passes. Plain C++ on raw pointers (no torch), compiled once per
// instruction set (kernels_avx512.cpp, kernels_avx2.cpp, kernels_base.cpp) and chosen at run time.
//
// All matrices are row-major. "A" is a gathered and scaled activation block (M x k: a[:, K] * mult), idx the k
// kept units K, B a weight stored n x ldb (W^T) whose kept rows are B[idx[j]].
//
// The gate layout of the layer: H is padded to Hp (a multiple of UNITS) and the 4 gates of each chunk of UNITS
// units are stored side by side, so that one block of CHUNK = 4 * UNITS gate columns holds everything the cell
// of those units reads: gate q of unit u sits at column (u / UNITS) * CHUNK + q * UNITS + u % UNITS.
#pragma once
#include <cstdint>

namespace structdrop {

constexpr int UNITS = 16;
constexpr int CHUNK = 4 * UNITS;

template <typename T>
struct Kernels {
  const char* isa;
  // C[m, n0:n1] += sum_j A[m * lda + j] * B[idx[j] * ldb + n]                       (forward products)
  // or, given a row init, C[m, n] = init[n] + the sum (C is only written)
  void (*kept_nn)(int M, int k, const T* A, int lda, const int64_t* idx, const T* B, int64_t ldb, T* C,
                  int64_t ldc, int64_t n0, int64_t n1, const T* init);
  // O[m * ldo + j] = sum_{n < N} D[m * ldd + n] * B[idx[j] * ldb + n]                   (input gradients)
  // or, with add, O[m * ldo + j] += the sum
  void (*kept_nt)(int M, int k, const T* D, int64_t ldd, const int64_t* idx, const T* B, int64_t ldb, int64_t N,
                  T* O, int ldo, bool add);
  // dB[idx[j] * ldb + n] += sum_m At[j * ldat + m] * D[m * ldd + n], n in [n0, n1)    (weight gradients)
  // with At the gathered block transposed (k x M)
  void (*kept_tn)(int M, int k, const T* At, int ldat, const int64_t* idx, const T* D, int64_t ldd, T* dB,
                  int64_t ldb, int64_t n0, int64_t n1);
  // The cell of `units` units (at most UNITS) for rows [0, M): gate q of unit u at gates[m * ldg + q * gs + u]
  // (gs = UNITS in the layer's gate layout, H in torch's); act receives the activations (it may be gates itself);
  // c = f * c_prev + i * g, tanh_c = tanh(c), h = o * tanh_c (row stride lds).
  void (*cell_forward)(int M, int units, const T* gates, T* act, int64_t ldg, int64_t gs, const T* c_prev, T* c,
                       T* tanh_c, T* h, int64_t lds);
  // Its gradient: dgates (laid out as act) from dh and dc (the gradient reaching c), and dc becomes that of c_prev.
  void (*cell_backward)(int M, int units, const T* act, int64_t ldg, int64_t gs, const T* c_prev, const T* tanh_c,
                        const T* dh, T* dc, int64_t lds, T* dgates);
  // out[n] += sum_{m < M} D[m * ldd + n] for n < N                                          (bias gradients)
  void (*column_sums)(int M, int64_t N, const T* D, int64_t ldd, T* out);
  // dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols                  (weights into the gate layout)
  void (*transpose)(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd);
};

namespace avx512 { template <typename T> Kernels<T> kernels(); }
namespace avx2 { template <typename T> Kernels<T> kernels(); }
namespace base { template <typename T> Kernels<T> kernels(); }

}  // namespace structdrop
