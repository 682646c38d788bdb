// What the native engine's files share: the instruction set's kernels, masks as the kernels read them, per-thread
// scratch buffers, the blocking of products over weight columns, weights stored by rows or by columns, and the
// input gradients of a sequence's kept products (the layer's and the output layer's). The engine: isa.cpp (the
// kernels chosen for this CPU), layer.cpp (one LSTM layer and direction), sequence.cpp (masked products of a whole
// sequence), steps.cpp (one step's products and cell), bindings.cpp (the Python module). Called by
// onmt_structdrop/ops/native_backend.py, which documents the arguments; the operations are those of the seam
// (onmt_structdrop/ops/__init__.py).
#pragma once
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace structdrop {

using at::Tensor;

// ---- the instruction set (isa.cpp) ----------------------------------------------------------------------------
std::string& isa_name();
void set_isa(const std::string& name);
template <typename T>
Kernels<T> kernels();

// ---- masks -----------------------------------------------------------------------------------------------
// A packed mask (ops/packed.py): kept units keep[g, :k] and their multipliers (values[g] or scale) per kept set
// g, and the set of every step. No mask is one set keeping every unit with multiplier 1.
template <typename T>
struct MaskView {
  const int64_t* keep;
  int k;
  const T* values;  // nullptr: every kept unit is multiplied by scale
  T scale;
  std::vector<int64_t> step_set;

  const int64_t* units(int64_t t) const { return keep + step_set[t] * k; }
  T mult(int64_t t, int j) const { return values ? values[step_set[t] * k + j] : scale; }
};

template <typename T>
MaskView<T> view(const Tensor& keep, const c10::optional<Tensor>& values, double scale,
                 const std::vector<int64_t>& step_set) {
  TORCH_CHECK(keep.dim() == 2 && keep.scalar_type() == at::kLong && keep.is_contiguous(),
              "keep must be a contiguous [G, k] int64 tensor");
  const T* v = nullptr;
  if (values && values->defined()) {
    TORCH_CHECK(values->sizes() == keep.sizes() && values->is_contiguous(), "values must be [G, k] like keep");
    v = values->data_ptr<T>();
  }
  return MaskView<T>{keep.data_ptr<int64_t>(), static_cast<int>(keep.size(1)), v, static_cast<T>(scale),
                     step_set};
}

// dst[m, j] = src[m, keep[j]] * mult_j for rows [0, M): the kept columns of one step, multipliers applied.
template <typename T>
void gather(int64_t M, const T* src, int64_t lds, const MaskView<T>& mask, int64_t t, T* dst) {
  const int64_t* units = mask.units(t);
  for (int64_t m = 0; m < M; ++m)
    for (int j = 0; j < mask.k; ++j) dst[m * mask.k + j] = src[m * lds + units[j]] * mask.mult(t, j);
}

// the kept columns of every step of a [T, B, n] sequence: [T, B, k], in parallel over the steps
template <typename T>
Tensor gather_steps(const Tensor& a, const MaskView<T>& mask) {
  const int64_t T_ = a.size(0), B = a.size(1), n = a.size(2);
  Tensor out = at::empty({T_, B, mask.k}, a.options());
  const T* ap = a.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, T_, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) gather(B, ap + t * B * n, n, mask, t, op + t * B * mask.k);
  });
  return out;
}

// dst[m, keep[j]] = src[m, j] * mult_j for rows [0, M) (the other columns are left as they are).
template <typename T>
void scatter(int64_t M, const T* src, const MaskView<T>& mask, int64_t t, T* dst, int64_t ldd) {
  const int64_t* units = mask.units(t);
  for (int64_t m = 0; m < M; ++m)
    for (int j = 0; j < mask.k; ++j) dst[m * ldd + units[j]] = src[m * mask.k + j] * mask.mult(t, j);
}

// A mask as the bindings take it from Python: (keep [G, k], values [G, k] or None, scale, the set of every step)
using MaskArgs = std::tuple<Tensor, c10::optional<Tensor>, double, std::vector<int64_t>>;

template <typename T>
MaskView<T> view(const MaskArgs& mask) {
  return view<T>(std::get<0>(mask), std::get<1>(mask), std::get<2>(mask), std::get<3>(mask));
}

// at::zeros on the CPU is calloc-like: large tensors come as fresh pages, a page fault each 4 KiB (measured 5x
// the time of empty().zero_() on a 16 MB tensor, which reuses the allocator's memory)
inline Tensor zeros(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options).zero_(); }

// Buffers that live only during one call, kept from call to call (per thread, per slot): a fresh multi-MB
// tensor costs a page fault per 4 KiB on first touch, which at these sizes is a visible share of a layer's time.
inline Tensor scratch(int slot, at::IntArrayRef sizes, const at::TensorOptions& options, bool zero) {
  static thread_local std::vector<Tensor> slots;
  if (slots.size() <= static_cast<size_t>(slot)) slots.resize(slot + 1);
  Tensor& t = slots[slot];
  const int64_t numel = c10::multiply_integers(sizes);
  if (!t.defined() || t.scalar_type() != options.dtype().toScalarType() || t.numel() < numel)
    t = at::empty({numel}, options);
  Tensor out = t.narrow(0, 0, numel).view(sizes);
  if (zero) out.zero_();
  return out;
}

// the gathered blocks of every step transposed, [T, B, k] -> [T, k, B] (the weight-gradient kernels read them so),
// into scratch slot `slot`
template <typename T>
Tensor transposed_steps(const Kernels<T>& K, const Tensor& ak, int slot) {
  const int64_t T_ = ak.size(0), B = ak.size(1), k = ak.size(2);
  Tensor out = scratch(slot, {T_, k, B}, ak.options(), false);
  const T* src = ak.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  at::parallel_for(0, T_, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) K.transpose(B, k, src + t * B * k, k, dst + t * B * k, B);
  });
  return out;
}

constexpr int64_t COLUMNS = 256;  // columns per parallel work item of the products outside the layer

// The columns [0, N) in blocks of about COLUMNS (whole cache lines), as many as a multiple of the thread count (11
// blocks of 2600 columns on 2 threads left one thread a sixth more work than the other); in parallel, each thread's
// share a run of whole blocks. run(c0, c1) is called once per run: one step's product has nothing to keep in cache
// from one block to the next, and fewer, wider calls cost less.
template <typename F>
void for_each_column_run(int64_t N, F&& run) {
  constexpr int64_t LINE = 16;  // columns of a 64-byte cache line of floats
  const int64_t threads = std::max(1, at::get_num_threads());
  const int64_t blocks = ((N + COLUMNS - 1) / COLUMNS + threads - 1) / threads * threads;
  const int64_t width = std::max<int64_t>(LINE, (N + blocks - 1) / blocks + LINE - 1) / LINE * LINE;
  at::parallel_for(0, (N + width - 1) / width, 1,
                   [&](int64_t b0, int64_t b1) { run(b0 * width, std::min(N, b1 * width), width); });
}

// block(c0, c1) for each block on its own: a loop over all steps inside a block keeps the block's weight columns in
// cache (a whole run at once streamed the full weight from L3 at every step: the output layer's forward 1.5x slower)
template <typename F>
void for_each_column_block(int64_t N, F&& block) {
  for_each_column_run(N, [&](int64_t c0, int64_t c1, int64_t width) {
    for (int64_t b = c0; b < c1; b += width) block(b, std::min(c1, b + width));
  });
}

// The weight wt [n, N] of these products as its caller stores it: by rows (wt contiguous), or by columns (wt the
// transpose of a contiguous [N, n] weight, nn.Linear's layout), used in place either way: a 10k-row output
// layer's weight is tens of MB, and copying it into rows took as long as a tenth of the products.
template <typename T>
struct Stored {
  T* p;
  int64_t n, N;
  bool by_columns;

  // the columns [c0, c0 + w) of every row into dst (n x w, rows ldd apart)
  void read(const Kernels<T>& K, int64_t c0, int64_t w, T* dst, int64_t ldd) const {
    if (by_columns) return K.transpose(w, n, p + c0 * n, n, dst, ldd);
    for (int64_t i = 0; i < n; ++i) std::copy_n(p + i * N + c0, w, dst + i * ldd);
  }
  // and back: src (n x w, rows lds apart) into those columns
  void write(const Kernels<T>& K, int64_t c0, int64_t w, const T* src, int64_t lds) const {
    if (by_columns) {  // a stripe of 16 weight rows at a time, so that each is written whole, in order
      for (int64_t c = 0; c < w; c += 16) K.transpose(n, std::min<int64_t>(16, w - c), src + c, lds, p + (c0 + c) * n, n);
      return;
    }
    for (int64_t i = 0; i < n; ++i) std::copy_n(src + i * lds, w, p + i * N + c0);
  }
};

// wt by rows or by columns as it comes (anything else copied into rows)
inline Tensor as_stored(const Tensor& wt) { return wt.is_contiguous() || wt.t().is_contiguous() ? wt : wt.contiguous(); }

template <typename T>
Stored<T> stored(const Tensor& wt) {
  return Stored<T>{wt.data_ptr<T>(), wt.size(0), wt.size(1), !wt.is_contiguous()};
}

// a fresh [n, N] tensor stored as wt is (the weight gradient goes straight into the weight's own layout)
inline Tensor empty_like_stored(const Tensor& wt) {
  if (wt.is_contiguous()) return at::empty(wt.sizes(), wt.options());
  return at::empty({wt.size(1), wt.size(0)}, wt.options()).t();
}

// The input gradient of every step's kept product, da[t][:, K_t] = mult * (dout[t] @ wt[K_t]^T), the dropped
// columns zero: [T, B, n] from dout [T, B, N] and wt [n, N]; in parallel over the steps. Each thread's steps run
// inside each block of SPAN columns in turn, their sums added up in per-thread scratch: a block of wt's rows then
// stays in L2 across the steps (one step at a time over all N columns streamed the kept rows from L3 at every step).
// The dot products run along rows: wt stored by columns is transposed a block at a time into per-thread scratch,
// where the steps find it in L2 (the whole weight transposed at once went to memory and back).
template <typename T>
Tensor input_gradients(const Kernels<T>& K, const T* dout, const Stored<T>& wt, const MaskView<T>& mask, int64_t T_,
                       int64_t B, const at::TensorOptions& options) {
  constexpr int64_t SPAN = 4096 / sizeof(T);
  const int64_t n = wt.n, N = wt.N, per = B * mask.k;
  Tensor da = zeros({T_, B, n}, options);
  T* dap = da.data_ptr<T>();
  at::parallel_for(0, T_, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> sums((t1 - t0) * per);
    T* rows = wt.by_columns ? scratch(6, {n, SPAN}, options, false).template data_ptr<T>() : nullptr;
    for (int64_t c0 = 0; c0 < N; c0 += SPAN) {
      const int64_t w = std::min(SPAN, N - c0);
      if (rows) wt.read(K, c0, w, rows, SPAN);
      const T* block = rows ? rows : wt.p + c0;
      const int64_t ldb = rows ? SPAN : N;
      for (int64_t t = t0; t < t1; ++t)
        K.kept_nt(B, mask.k, dout + t * B * N + c0, N, mask.units(t), block, ldb, w, sums.data() + (t - t0) * per,
                  mask.k, c0 > 0);
    }
    for (int64_t t = t0; t < t1; ++t) scatter(B, sums.data() + (t - t0) * per, mask, t, dap + t * B * n, n);
  });
  return da;
}

// ---- the entry points the bindings call (each file's dtype dispatch) ------------------------------------------
std::vector<Tensor> lstm_layer_forward(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                                       const Tensor& w_hh, const c10::optional<Tensor>& bias, const MaskArgs& in,
                                       const MaskArgs& rec, const std::vector<int64_t>& batch_sizes, bool reverse);
std::vector<Tensor> lstm_layer_backward(const std::vector<Tensor>& saved, const MaskArgs& in, const MaskArgs& rec,
                                        const std::vector<int64_t>& batch_sizes, bool reverse, int64_t n, int64_t H,
                                        const c10::optional<Tensor>& dy, const c10::optional<Tensor>& dh_n,
                                        const c10::optional<Tensor>& dc_n, bool need_x);
std::vector<Tensor> sequence_product(const Tensor& a, const Tensor& wt, const MaskArgs& mask,
                                     const c10::optional<Tensor>& bias);
Tensor gathered(const Tensor& a, const MaskArgs& mask);
std::vector<Tensor> sequence_gradients(const Tensor& ak, const Tensor& wt, const MaskArgs& mask, const Tensor& dout,
                                       int64_t n, bool need_input_grad, bool need_bias_grad);
void kept_step_product(const Tensor& a, const Tensor& keep, const c10::optional<Tensor>& values, double scale,
                       const Tensor& wt, Tensor& out);
void kept_step_input_grad(const Tensor& dout, const Tensor& keep, const c10::optional<Tensor>& values, double scale,
                          const Tensor& wt, Tensor& da);
void kept_step_weight_grad(const Tensor& a, const Tensor& keep, const c10::optional<Tensor>& values, double scale,
                           const Tensor& dout, Tensor& dwt);
void cell_forward(const Tensor& gates, const Tensor& c_prev, Tensor& act, Tensor& c, Tensor& tanh_c, Tensor& h);
void cell_backward(const Tensor& act, const Tensor& c_prev, const Tensor& tanh_c, const Tensor& dh, Tensor& dc,
                   Tensor& dgates);

}  // namespace structdrop
