// The kernels of kernels.h, written once with GCC vector extensions. Each kernels_<isa>.cpp sets the target
// instruction set with a pragma, defines the macros below and includes this file:
//   STRUCTDROP_ISA     the namespace (and name) of this build
//   STRUCTDROP_VBYTES  bytes per vector register
//   NN_MR, NN_NV       forward tile: rows x vectors of columns held in registers
//   NT_JR, NT_MR       input-gradient tile: kept rows x rows of D
//   TN_JR, TN_NV       weight-gradient tile: kept rows x vectors of columns
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#include "kernels.h"

#define STRUCTDROP_STR(x) #x
#define STRUCTDROP_NAME(x) STRUCTDROP_STR(x)

namespace structdrop {
namespace STRUCTDROP_ISA {
namespace {

template <typename T>
struct Vec {
  typedef T v __attribute__((vector_size(STRUCTDROP_VBYTES)));
  static constexpr int L = STRUCTDROP_VBYTES / sizeof(T);
};
template <typename T> using V = typename Vec<T>::v;

template <typename T> inline V<T> load(const T* p) { V<T> r; std::memcpy(&r, p, sizeof r); return r; }
template <typename T> inline void store(T* p, V<T> x) { std::memcpy(p, &x, sizeof x); }
template <typename T> inline V<T> splat(T s) { return s - V<T>{}; }  // s - 0 is exact, so it folds to a broadcast
template <typename T> inline T hsum(V<T> x) {
  T s = 0;
  for (int l = 0; l < Vec<T>::L; ++l) s += x[l];
  return s;
}
// Horizontal sums of four vectors at once, by folding halves: lanes 0..3 of sum4(x0, x1, x2, x3) are the sums of
// x0..x3 (about 4 + log2(L) shuffle-and-add steps instead of 4 L extractions). fold<W>(a, b): a and b hold segments
// of W lanes; the result holds them halved (W / 2 lanes each), a's first, then b's.
constexpr int fold_lane(int L, int W, int o) { return (o < L / 2 ? 0 : L) + (o % (L / 2)) / (W / 2) * W + o % (W / 2); }

template <typename T, int W, size_t... O>
inline V<T> fold(V<T> a, V<T> b, std::index_sequence<O...>) {
  constexpr int L = Vec<T>::L;
  return __builtin_shufflevector(a, b, fold_lane(L, W, O)...) +
         __builtin_shufflevector(a, b, (fold_lane(L, W, O) + W / 2)...);
}

template <typename T, int W> inline V<T> fold(V<T> a, V<T> b) {
  return fold<T, W>(a, b, std::make_index_sequence<Vec<T>::L>{});
}

template <typename T, int W> inline V<T> fold_down(V<T> z) {  // segments of W lanes -> of 1 lane, in the low lanes
  if constexpr (W == 1) return z;
  else return fold_down<T, W / 2>(fold<T, W>(z, z));
}

template <typename T> inline V<T> sum4(V<T> x0, V<T> x1, V<T> x2, V<T> x3) {
  constexpr int L = Vec<T>::L;
  static_assert(L >= 4, "sum4 needs 4 lanes");
  return fold_down<T, L / 4>(fold<T, L / 2>(fold<T, L>(x0, x1), fold<T, L>(x2, x3)));
}

// The loops over a register tile's rows and vectors are unrolled outright (GCC unrolls them too late otherwise:
// the accumulators then stay an array on the stack outside the inner loop, stored and reloaded around every tile,
// which in a 20-row weight-gradient tile added 72 to its 248 loads and stores)
#define TILE _Pragma("GCC unroll 16")

template <typename T> inline void prefetch_row(const T* p, int bytes) {
  for (int b = 0; b < bytes; b += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + b);
}

// ---- forward: C[m, n] += sum_j A[m, j] B[idx[j], n] -------------------------------------------------------
constexpr int PREFETCH = 8;  // kept rows ahead: the rows are scattered, so the hardware cannot guess them

// Every row tile prefetches the weight rows it will read: a column tile's kept rows outgrow L1, so the later row
// tiles read them from L2 again, and the scattered rows leave the hardware prefetcher nothing to follow
template <typename T, int MR, int NV>
inline void nn_tile(int k, const T* A, int lda, const int64_t* idx, const T* B, int64_t ldb, T* C, int64_t ldc,
                    const T* init) {
  constexpr int L = Vec<T>::L;
  V<T> acc[MR][NV];
  TILE for (int r = 0; r < MR; ++r)
    TILE for (int v = 0; v < NV; ++v) acc[r][v] = V<T>{};
  const T* ar[MR];  // the rows of A, so that a broadcast's address is a row and j, no index arithmetic
  TILE for (int r = 0; r < MR; ++r) ar[r] = A + static_cast<int64_t>(r) * lda;
  for (int64_t j = 0; j < k; ++j) {
    const T* b = B + idx[j] * ldb;
    if (j + PREFETCH < k) prefetch_row(B + idx[j + PREFETCH] * ldb, NV * L * sizeof(T));
    V<T> bv[NV];
    TILE for (int v = 0; v < NV; ++v) bv[v] = load(b + v * L);
    TILE for (int r = 0; r < MR; ++r) {
      const V<T> a = splat(ar[r][j]);
      TILE for (int v = 0; v < NV; ++v) acc[r][v] += a * bv[v];
    }
  }
  TILE for (int r = 0; r < MR; ++r)
    TILE for (int v = 0; v < NV; ++v) store(C + r * ldc + v * L, load(init ? init + v * L : C + r * ldc + v * L) + acc[r][v]);
}

template <typename T, int NV, int R>
inline void nn_rest(int rows, int k, const T* A, int lda, const int64_t* idx, const T* B, int64_t ldb, T* C,
                    int64_t ldc, const T* init) {
  if constexpr (R > 0) {
    if (rows == R) return nn_tile<T, R, NV>(k, A, lda, idx, B, ldb, C, ldc, init);
    nn_rest<T, NV, R - 1>(rows, k, A, lda, idx, B, ldb, C, ldc, init);
  }
}

// Rows split into tiles of at most MR, as even as can be (20 rows with MR = 6: 5 + 5 + 5 + 5, not 6 + 6 + 6 + 2:
// every tile reads the same weight rows, so a thin last tile costs nearly as much as a full one).
template <int MR, typename F>
inline void row_tiles(int M, F&& tile) {
  const int tiles = (M + MR - 1) / MR;
  for (int i = 0, m = 0; i < tiles; ++i) {
    const int rows = M / tiles + (i < M % tiles);
    tile(m, rows);
    m += rows;
  }
}

template <typename T, int NV>
inline void nn_columns(int M, int k, const T* A, int lda, const int64_t* idx, const T* B, int64_t ldb, T* C,
                       int64_t ldc, const T* init) {
  row_tiles<NN_MR>(M, [&](int m, int rows) {
    nn_rest<T, NV, NN_MR>(rows, k, A + m * lda, lda, idx, B, ldb, C + m * ldc, ldc, init);
  });
}

// The columns [n0, n1) in tiles of NV vectors, then of one vector: tile(NV or 1, n), with NV passed as a
// std::integral_constant; then tail(n, r) for the last r < L columns, if any.
template <typename T, int NV, typename Tile, typename Tail>
inline void column_tiles(int64_t n0, int64_t n1, Tile&& tile, Tail&& tail) {
  constexpr int L = Vec<T>::L;
  int64_t n = n0;
  for (; n + NV * L <= n1; n += NV * L) tile(std::integral_constant<int, NV>{}, n);
  for (; n + L <= n1; n += L) tile(std::integral_constant<int, 1>{}, n);
  if (n < n1) tail(n, static_cast<int>(n1 - n));
}

// The last r < L columns run as one whole vector, through zero-padded copies of what the tiles read and write
// (a scalar loop per column would run one dependent sum of k or M products per element: a sixth of a 20-row
// product when N is 8 columns past a multiple of 16). calloc and memcpy, not std::vector: these kernels are
// compiled once per instruction set, and a template instantiated in each could be linked in from the wrong one.
struct Padded {
  void* p;
  explicit Padded(size_t bytes) : p(bytes ? std::calloc(bytes, 1) : nullptr) {  // nothing asked: nothing allocated
    if (bytes && !p) throw std::bad_alloc();
  }
  ~Padded() { std::free(p); }
  Padded(const Padded&) = delete;
  Padded& operator=(const Padded&) = delete;
};

template <typename T>
void kept_nn(int M, int k, const T* A, int lda, const int64_t* idx, const T* B, int64_t ldb, T* C, int64_t ldc,
             int64_t n0, int64_t n1, const T* init) {
  column_tiles<T, NN_NV>(
      n0, n1,
      [&](auto nv, int64_t n) {
        nn_columns<T, nv.value>(M, k, A, lda, idx, B + n, ldb, C + n, ldc, init ? init + n : nullptr);
      },
      [&](int64_t n, int r) {  // the kept rows' last columns, in order, and C's (or init's) into padded copies
        constexpr int L = Vec<T>::L;
        Padded rows(sizeof(T) * k * L), tile(sizeof(T) * M * L), head(sizeof(T) * L), order(sizeof(int64_t) * k);
        T *rp = static_cast<T*>(rows.p), *tp = static_cast<T*>(tile.p), *hp = static_cast<T*>(head.p);
        int64_t* op = static_cast<int64_t*>(order.p);
        for (int j = 0; j < k; ++j) op[j] = j, std::memcpy(rp + j * L, B + idx[j] * ldb + n, r * sizeof(T));
        if (init) std::memcpy(hp, init + n, r * sizeof(T));
        else for (int m = 0; m < M; ++m) std::memcpy(tp + m * L, C + m * ldc + n, r * sizeof(T));
        nn_columns<T, 1>(M, k, A, lda, op, rp, L, tp, L, init ? hp : nullptr);
        for (int m = 0; m < M; ++m) std::memcpy(C + m * ldc + n, tp + m * L, r * sizeof(T));
      });
}

// ---- input gradients: O[m, j] = sum_n D[m, n] B[idx[j], n] -----------------------------------------------
// ahead: a row to fetch while the tile computes, a cache line per vector of the sum (nullptr: none)
template <typename T, int JR, int MR>
inline void nt_tile(int64_t N, const T* D, int64_t ldd, const T* const* rows, T* O, int ldo, bool add,
                    const T* ahead) {
  constexpr int L = Vec<T>::L;
  V<T> acc[MR][JR];
  TILE for (int r = 0; r < MR; ++r)
    TILE for (int q = 0; q < JR; ++q) acc[r][q] = V<T>{};
  int64_t n = 0;
  for (; n + L <= N; n += L) {
    if (ahead) __builtin_prefetch(ahead + n);
    V<T> bv[JR];
    TILE for (int q = 0; q < JR; ++q) bv[q] = load(rows[q] + n);
    TILE for (int r = 0; r < MR; ++r) {
      const V<T> d = load(D + r * ldd + n);
      TILE for (int q = 0; q < JR; ++q) acc[r][q] += d * bv[q];
    }
  }
  T sums[MR][JR];
  TILE for (int r = 0; r < MR; ++r) {
    if constexpr (JR == 4 && Vec<T>::L >= 4) {
      const V<T> s4 = sum4<T>(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
      for (int q = 0; q < 4; ++q) sums[r][q] = s4[q];
    } else {
      TILE for (int q = 0; q < JR; ++q) sums[r][q] = hsum<T>(acc[r][q]);
    }
  }
  for (int r = 0; r < MR; ++r)  // the columns past the last whole vector, if any, and out
    for (int q = 0; q < JR; ++q) {
      T s = sums[r][q];
      for (int64_t t = n; t < N; ++t) s += D[r * ldd + t] * rows[q][t];
      O[r * ldo + q] = add ? O[r * ldo + q] + s : s;
    }
}

template <typename T, int JR, int R>
inline void nt_rest(int rows_left, int64_t N, const T* D, int64_t ldd, const T* const* rows, T* O, int ldo,
                    bool add, const T* ahead) {
  if constexpr (R > 0) {
    if (rows_left == R) return nt_tile<T, JR, R>(N, D, ldd, rows, O, ldo, add, ahead);
    nt_rest<T, JR, R - 1>(rows_left, N, D, ldd, rows, O, ldo, add, ahead);
  }
}

// next: the rows of the next tile of kept rows (nullptr: none). Every row tile re-reads this tile's rows from L1;
// row tile i fetches next[i] meanwhile, so that the next tile does not wait for its rows to come from L2 or L3.
template <typename T, int JR>
inline void nt_kept(int M, int64_t N, const T* D, int64_t ldd, const T* const* rows, T* O, int ldo, bool add,
                    const T* const* next) {
  int i = 0;
  row_tiles<NT_MR>(M, [&](int m, int r) {
    nt_rest<T, JR, NT_MR>(r, N, D + m * ldd, ldd, rows, O + m * ldo, ldo, add, next && i < JR ? next[i] : nullptr);
    ++i;
  });
}

template <typename T>
void kept_nt(int M, int k, const T* D, int64_t ldd, const int64_t* idx, const T* B, int64_t ldb, int64_t N, T* O,
             int ldo, bool add) {
  // the sums run over blocks of NB columns, so that the block of D the tiles share stays in cache
  constexpr int64_t NB = 4096 / sizeof(T);
  const T *rows[NT_JR], *next[NT_JR];
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    const int64_t nb = std::min(NB, N - n0);
    auto row = [&](int j) { return j < k ? B + idx[j] * ldb + n0 : nullptr; };
    int j = 0;
    for (; j + NT_JR <= k; j += NT_JR) {
      for (int q = 0; q < NT_JR; ++q) rows[q] = row(j + q), next[q] = row(j + NT_JR + q);
      nt_kept<T, NT_JR>(M, nb, D + n0, ldd, rows, O + j, ldo, add || n0 > 0, next);
    }
    for (; j < k; ++j) {
      rows[0] = row(j);
      nt_kept<T, 1>(M, nb, D + n0, ldd, rows, O + j, ldo, add || n0 > 0, nullptr);
    }
  }
}

// ---- weight gradients: dB[idx[j], n] += sum_m At[j, m] D[m, n] -------------------------------------------
// At is the gathered block transposed (k x M): the JR x M values a tile broadcasts are then JR short rows, not
// a few values from each of M rows (in a layer's weight-gradient loop about a tenth faster)
template <typename T, int JR, int NV>
inline void tn_tile(int M, const T* At, int ldat, const int64_t* idx, const T* D, int64_t ldd, T* dB, int64_t ldb) {
  constexpr int L = Vec<T>::L;
  // the scattered rows this tile adds into, fetched while it computes: with only M (a step's batch) products per
  // accumulator the loads of the final read-modify-write would otherwise stall the tile
  TILE for (int q = 0; q < JR; ++q) prefetch_row(dB + idx[q] * ldb, NV * L * sizeof(T));
  V<T> acc[JR][NV];
  TILE for (int q = 0; q < JR; ++q)
    TILE for (int v = 0; v < NV; ++v) acc[q][v] = V<T>{};
  const T* at[JR];  // the rows of At, so that a broadcast's address is a row and m, no index arithmetic
  TILE for (int q = 0; q < JR; ++q) at[q] = At + static_cast<int64_t>(q) * ldat;
  for (int64_t m = 0; m < M; ++m) {
    V<T> d[NV];
    TILE for (int v = 0; v < NV; ++v) d[v] = load(D + m * ldd + v * L);
    TILE for (int q = 0; q < JR; ++q) {
      const V<T> a = splat(at[q][m]);
      TILE for (int v = 0; v < NV; ++v) acc[q][v] += a * d[v];
    }
  }
  TILE for (int q = 0; q < JR; ++q) {
    T* row = dB + idx[q] * ldb;
    TILE for (int v = 0; v < NV; ++v) store(row + v * L, load(row + v * L) + acc[q][v]);
  }
}

// A tile of kept rows runs over all the column tiles before the next one: each kept row's part of dB is then read
// and written in one sweep (a gradient in memory streams row by row) instead of a tile's width at a time with all
// the other kept rows in between, which brought its lines back from memory for every tile of columns. D's
// columns [n0, n1) (M rows) stay in cache meanwhile: in L1 for a sequence's blocks of at most 256 columns, in L2 for
// one step's share of a thread. The last r < L columns, if any, run as one vector right after each tile's sweep,
// through a zero-padded copy of D's and a padded buffer of sums, while the rows' last lines are still in cache (a
// separate pass over all kept rows at the end fetched each row's last line again: a tenth of a 20-row product).
template <typename T>
void kept_tn(int M, int k, const T* At, int ldat, const int64_t* idx, const T* D, int64_t ldd, T* dB, int64_t ldb,
             int64_t n0, int64_t n1) {
  constexpr int L = Vec<T>::L;
  const int64_t whole = n0 + (n1 - n0) / L * L;
  const int r = static_cast<int>(n1 - whole);
  Padded d(r ? sizeof(T) * M * L : 0), sums(r ? sizeof(T) * TN_JR * L : 0);
  T *dp = static_cast<T*>(d.p), *sp = static_cast<T*>(sums.p);
  for (int m = 0; r && m < M; ++m) std::memcpy(dp + m * L, D + m * ldd + whole, r * sizeof(T));
  int64_t rows[TN_JR];  // the sums' rows in their buffer
  for (int q = 0; q < TN_JR; ++q) rows[q] = q;
  auto sweep = [&](auto jr, int j) {
    column_tiles<T, TN_NV>(
        n0, whole,
        [&](auto nv, int64_t n) {
          tn_tile<T, jr.value, nv.value>(M, At + j * ldat, ldat, idx + j, D + n, ldd, dB + n, ldb);
        },
        [](int64_t, int) {});
    if (!r) return;
    std::memset(sp, 0, sizeof(T) * jr.value * L);
    tn_tile<T, jr.value, 1>(M, At + j * ldat, ldat, rows, dp, L, sp, L);
    for (int q = 0; q < jr.value; ++q)
      for (int c = 0; c < r; ++c) dB[idx[j + q] * ldb + whole + c] += sp[q * L + c];
  };
  int j = 0;
  for (; j + TN_JR <= k; j += TN_JR) sweep(std::integral_constant<int, TN_JR>{}, j);
  for (; j < k; ++j) sweep(std::integral_constant<int, 1>{}, j);
}

// ---- the cell --------------------------------------------------------------------------------------------
inline V<float> exp_approx(V<float> x) {
  // Cephes' expf: x = n ln2 + f, |f| <= ln2 / 2, exp(f) by a degree-6 polynomial, 2^n through the exponent bits
  typedef int32_t vi __attribute__((vector_size(STRUCTDROP_VBYTES)));
  const V<float> lo = splat(-87.0f), hi = splat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V<float> magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const V<float> n = (x * 1.44269504088896341f + magic) - magic;
  V<float> f = x - n * 0.693359375f;
  f = f - n * -2.12194440e-4f;
  V<float> p = splat(1.9875691500e-4f);
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  V<float> scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T> inline V<T> sigmoid(V<T> x) {
  if constexpr (sizeof(T) == 4) {
    return 1.0f / (1.0f + exp_approx(-x));
  } else {
    for (int l = 0; l < Vec<T>::L; ++l) x[l] = 1.0 / (1.0 + __builtin_exp(-x[l]));
    return x;
  }
}

template <typename T> inline V<T> tanh(V<T> x) {
  if constexpr (sizeof(T) == 4) {
    return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f;
  } else {
    for (int l = 0; l < Vec<T>::L; ++l) x[l] = __builtin_tanh(x[l]);
    return x;
  }
}

// The cell's math written once for W = V<T> (L units at a time) and W = T (one unit: the units left over when a
// chunk is cut short by the hidden size); these pick the vector or the scalar form.
template <typename T, typename W> inline W ld(const T* p) {
  if constexpr (std::is_same_v<W, T>) return *p;
  else return load(p);
}
template <typename T, typename W> inline void st(T* p, W x) {
  if constexpr (std::is_same_v<W, T>) *p = x;
  else store(p, x);
}
template <typename T, typename W> inline W sig(W x) {
  if constexpr (std::is_same_v<W, T>) return T(1) / (T(1) + std::exp(-x));
  else return sigmoid<T>(x);
}
template <typename T, typename W> inline W th(W x) {
  if constexpr (std::is_same_v<W, T>) return std::tanh(x);
  else return tanh<T>(x);
}

template <typename T, typename W>
inline void cell_forward_at(const T* g, T* a, int64_t gs, const T* c_prev, T* c, T* tanh_c, T* h) {
  const W i = sig<T, W>(ld<T, W>(g)), f = sig<T, W>(ld<T, W>(g + gs)), z = th<T, W>(ld<T, W>(g + 2 * gs)),
          out = sig<T, W>(ld<T, W>(g + 3 * gs));
  st(a, i), st(a + gs, f), st(a + 2 * gs, z), st(a + 3 * gs, out);
  const W cn = f * ld<T, W>(c_prev) + i * z, tc = th<T, W>(cn);
  st(c, cn), st(tanh_c, tc), st(h, out * tc);
}

template <typename T, typename W>
inline void cell_backward_at(const T* g, int64_t gs, const T* c_prev, const T* tanh_c, const T* dh, T* dc, T* d) {
  const W i = ld<T, W>(g), f = ld<T, W>(g + gs), z = ld<T, W>(g + 2 * gs), out = ld<T, W>(g + 3 * gs);
  const W tc = ld<T, W>(tanh_c), dhv = ld<T, W>(dh);
  const W dcn = ld<T, W>(dc) + dhv * out * (T(1) - tc * tc);
  st(d, dcn * z * i * (T(1) - i));
  st(d + gs, dcn * ld<T, W>(c_prev) * f * (T(1) - f));
  st(d + 2 * gs, dcn * i * (T(1) - z * z));
  st(d + 3 * gs, dhv * tc * out * (T(1) - out));
  st(dc, dcn * f);
}

template <typename T>
void cell_forward(int M, int units, const T* gates, T* act, int64_t ldg, int64_t gs, const T* c_prev, T* c,
                  T* tanh_c, T* h, int64_t lds) {
  constexpr int L = Vec<T>::L;
  for (int m = 0; m < M; ++m) {
    int s = 0;
    for (; s + L <= units; s += L)
      cell_forward_at<T, V<T>>(gates + m * ldg + s, act + m * ldg + s, gs, c_prev + m * lds + s, c + m * lds + s,
                               tanh_c + m * lds + s, h + m * lds + s);
    for (; s < units; ++s)
      cell_forward_at<T, T>(gates + m * ldg + s, act + m * ldg + s, gs, c_prev + m * lds + s, c + m * lds + s,
                            tanh_c + m * lds + s, h + m * lds + s);
  }
}

template <typename T>
void cell_backward(int M, int units, const T* act, int64_t ldg, int64_t gs, const T* c_prev, const T* tanh_c,
                   const T* dh, T* dc, int64_t lds, T* dgates) {
  constexpr int L = Vec<T>::L;
  for (int m = 0; m < M; ++m) {
    int s = 0;
    for (; s + L <= units; s += L)
      cell_backward_at<T, V<T>>(act + m * ldg + s, gs, c_prev + m * lds + s, tanh_c + m * lds + s,
                                dh + m * lds + s, dc + m * lds + s, dgates + m * ldg + s);
    for (; s < units; ++s)
      cell_backward_at<T, T>(act + m * ldg + s, gs, c_prev + m * lds + s, tanh_c + m * lds + s, dh + m * lds + s,
                             dc + m * lds + s, dgates + m * ldg + s);
  }
}

// ---- bias gradients --------------------------------------------------------------------------------------
template <typename T>
void column_sums(int M, int64_t N, const T* D, int64_t ldd, T* out) {
  constexpr int L = Vec<T>::L;
  int64_t n = 0;
  for (; n + L <= N; n += L) {
    V<T> s = load(out + n);
    for (int m = 0; m < M; ++m) s += load(D + m * ldd + n);
    store(out + n, s);
  }
  for (; n < N; ++n)
    for (int m = 0; m < M; ++m) out[n] += D[m * ldd + n];
}

// ---- transposes -----------------------------------------------------------------------------------------
// An L x L tile in registers by block swaps: stage W exchanges the off-diagonal W x W blocks of every 2W x 2W
// block, rows i and i + W (i & W == 0); after the stages W = L / 2, ..., 1, row c holds column c.
template <typename T, int W, size_t... I>
inline void swap_blocks(V<T>& a, V<T>& b, std::index_sequence<I...>) {
  constexpr int L = Vec<T>::L;
  const V<T> lo = __builtin_shufflevector(a, b, ((I & W) ? L + I - W : I)...);
  const V<T> hi = __builtin_shufflevector(a, b, ((I & W) ? L + I : I + W)...);
  a = lo, b = hi;
}

template <typename T, int W>
inline void transpose_stages(V<T>* r) {
  if constexpr (W >= 1) {
    for (int i = 0; i < Vec<T>::L; ++i)
      if (!(i & W)) swap_blocks<T, W>(r[i], r[i + W], std::make_index_sequence<Vec<T>::L>{});
    transpose_stages<T, W / 2>(r);
  }
}

template <typename T>
inline void transpose_tile(const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int L = Vec<T>::L;
  V<T> r[L];
  for (int i = 0; i < L; ++i) r[i] = load(src + i * lds);
  transpose_stages<T, L / 2>(r);
  for (int i = 0; i < L; ++i) store(dst + i * ldd, r[i]);
}

template <typename T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int L = Vec<T>::L;
  const int64_t R = rows / L * L, C = cols / L * L;  // the part in whole tiles
  for (int64_t r = 0; r < R; r += L)
    for (int64_t c = 0; c < C; c += L) transpose_tile(src + r * lds + c, lds, dst + c * ldd + r, ldd);
  for (int64_t r = 0; r < rows; ++r)  // the rest, one by one
    for (int64_t c = r < R ? C : 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

template <typename T>
Kernels<T> table() {
  return Kernels<T>{STRUCTDROP_NAME(STRUCTDROP_ISA), &kept_nn<T>,       &kept_nt<T>,     &kept_tn<T>,
                    &cell_forward<T>,                &cell_backward<T>, &column_sums<T>, &transpose<T>};
}

}  // namespace

template <> Kernels<float> kernels<float>() { return table<float>(); }
template <> Kernels<double> kernels<double>() { return table<double>(); }

}  // namespace STRUCTDROP_ISA
}  // namespace structdrop
