// The native engine: one LSTM layer and direction (forward and backward time loops), and masked products of a
// whole sequence, on the kernels of kernels.h. Called by onmt_structdrop/ops/native_backend.py, which documents
// the arguments; the operations are those of the seam (onmt_structdrop/ops/__init__.py).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels.h"

namespace structdrop {
namespace {

using at::Tensor;

// ---- the instruction set, chosen once from what the CPU supports (ONMT_STRUCTDROP_ISA may ask for less) -----
// name if this CPU runs the kernels built for it; a clear error otherwise (never an illegal instruction)
std::string checked_isa(const std::string& name, const char* source) {
  TORCH_CHECK(name == "avx512" || name == "avx2" || name == "base", source,
              ": the instruction set must be avx512, avx2 or base; got ", name);
#if defined(__x86_64__)
  __builtin_cpu_init();
  TORCH_CHECK(name != "avx512" || (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                                   __builtin_cpu_supports("avx512dq")),
              source, ": this CPU has no AVX-512 (F, VL, DQ)");
  TORCH_CHECK(name != "avx2" || (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")), source,
              ": this CPU has no AVX2 and FMA");
#else
  TORCH_CHECK(name == "base", source, ": only the portable kernels are built for this CPU");
#endif
  return name;
}

std::string best_isa() {
  for (const char* name : {"avx512", "avx2"}) {
    try {
      return checked_isa(name, "");
    } catch (const c10::Error&) {
    }
  }
  return "base";
}

std::string& isa_name() {
  static std::string name = [] {
    const char* forced = std::getenv("ONMT_STRUCTDROP_ISA");
    return forced && *forced ? checked_isa(forced, "ONMT_STRUCTDROP_ISA") : best_isa();
  }();
  return name;
}

template <typename T>
Kernels<T> kernels() {
#if defined(__x86_64__)
  if (isa_name() == "avx512") return avx512::kernels<T>();
  if (isa_name() == "avx2") return avx2::kernels<T>();
#endif
  return base::kernels<T>();
}

void set_isa(const std::string& name) { isa_name() = checked_isa(name, "set_isa"); }

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

// at::zeros on the CPU is calloc-like: large tensors come as fresh pages, a page fault each 4 KiB (measured 5x
// the time of empty().zero_() on a 16 MB tensor, which reuses the allocator's memory)
Tensor zeros(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options).zero_(); }

// ---- the gate layout of kernels.h ------------------------------------------------------------------------
int64_t padded(int64_t H) { return (H + UNITS - 1) / UNITS * UNITS; }

// Buffers that live only during one call, kept from call to call (per thread, per slot): a fresh multi-MB
// tensor costs a page fault per 4 KiB on first touch, which at these sizes is a visible share of a layer's time.
Tensor scratch(int slot, at::IntArrayRef sizes, const at::TensorOptions& options, bool zero) {
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

// The gate rows q * H + [u, u + UNITS) of W are the gate columns u / UNITS * CHUNK + q * UNITS + [0, UNITS) of the
// layout: each such strip of W is transposed on its own, by the kernels' register tiles.
// strip(q, u0, units, i0, count) for every gate q, chunk of units and block of count <= ROWS inputs; in parallel
// over the blocks of inputs, so that one block's rows of the transposed matrix (its pages) are done together
constexpr int64_t ROWS = 64;

template <typename F>
void for_each_strip(int64_t H, int64_t n, F&& strip) {
  at::parallel_for(0, (n + ROWS - 1) / ROWS, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i0 = b0 * ROWS; i0 < std::min(n, b1 * ROWS); i0 += ROWS)
      for (int64_t q = 0; q < 4; ++q)
        for (int64_t u0 = 0; u0 < H; u0 += UNITS) strip(q, u0, std::min<int64_t>(UNITS, H - u0), i0, std::min(ROWS, n - i0));
  });
}

// [4H, n] (torch's W) -> [n, 4Hp]: transposed into the gate layout, padding zero (the forward hands it to the
// backward, which would otherwise transpose again)
template <typename T>
Tensor chunked_t(const Tensor& w, int64_t H) {
  const int64_t n = w.size(1), Hp = padded(H), G4 = 4 * Hp;
  Tensor out = at::empty({n, G4}, w.options());
  const T* src = w.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  const auto transpose = kernels<T>().transpose;
  for_each_strip(H, n, [&](int64_t q, int64_t u0, int64_t units, int64_t i0, int64_t count) {
    transpose(units, count, src + (q * H + u0) * n + i0, n, dst + i0 * G4 + u0 / UNITS * CHUNK + q * UNITS, G4);
  });
  if (Hp > H)  // the padded units of the last chunk, in each gate
    for (int64_t i = 0; i < n; ++i)
      for (int64_t q = 0; q < 4; ++q)
        std::fill_n(dst + i * G4 + (Hp - UNITS) * 4 + q * UNITS + H % UNITS, Hp - H, T(0));
  return out;
}

// the inverse of chunked_t for the gate columns [col, col + width) of a gradient (rows x width, in src): into
// torch's [4H, rows] (dst), a strip per gate and chunk of units, the padded units left out
template <typename T>
void unchunk_panel(const Kernels<T>& K, const T* src, int64_t rows, int64_t col, int64_t width, int64_t H, T* dst) {
  for (int64_t c = col; c < col + width; c += CHUNK) {
    const int64_t u0 = c / CHUNK * UNITS, units = std::min<int64_t>(UNITS, H - u0);
    for (int64_t q = 0; q < 4; ++q)
      K.transpose(rows, units, src + (c - col) + q * UNITS, width, dst + (q * H + u0) * rows, rows);
  }
}

Tensor chunked(const Tensor& b, int64_t H) {  // [4H] -> [4Hp]
  const int64_t Hp = padded(H);
  Tensor bp = zeros({4, Hp}, b.options());
  bp.narrow(1, 0, H).copy_(b.view({4, H}));
  return bp.view({4, Hp / UNITS, UNITS}).permute({1, 0, 2}).contiguous().view({4 * Hp});
}

Tensor unchunked(const Tensor& bp, int64_t H) {  // [4Hp] -> [4H]
  const int64_t Hp = padded(H);
  return bp.view({Hp / UNITS, 4, UNITS}).permute({1, 0, 2}).reshape({4, Hp}).narrow(1, 0, H).reshape({4 * H});
}

Tensor padded_state(const c10::optional<Tensor>& s, int64_t B, int64_t H, const at::TensorOptions& options) {
  Tensor out = zeros({B, padded(H)}, options);
  if (s && s->defined()) out.narrow(1, 0, H).copy_(*s);
  return out;
}

// panel(col, width) over the gate columns in panels of up to PANEL chunks, in parallel: a loop over all steps
// inside a panel keeps the panel's weight rows in cache, and a wider panel reads the steps' inputs fewer times
constexpr int64_t PANEL = 2;
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

template <typename F>
void for_each_panel(int64_t chunks, F&& panel) {
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ch += PANEL) panel(ch * CHUNK, std::min(PANEL, c1 - ch) * CHUNK);
  });
}

struct Steps {  // the steps in processing order and the active rows of each
  std::vector<int64_t> order, active;
  Steps(int64_t T, int64_t B, const std::vector<int64_t>& batch_sizes, bool reverse) : order(T), active(T) {
    for (int64_t i = 0; i < T; ++i) {
      order[i] = reverse ? T - 1 - i : i;
      active[i] = batch_sizes.empty() ? B : batch_sizes[order[i]];
    }
  }
};

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
Tensor as_stored(const Tensor& wt) { return wt.is_contiguous() || wt.t().is_contiguous() ? wt : wt.contiguous(); }

template <typename T>
Stored<T> stored(const Tensor& wt) {
  return Stored<T>{wt.data_ptr<T>(), wt.size(0), wt.size(1), !wt.is_contiguous()};
}

// a fresh [n, N] tensor stored as wt is (the weight gradient goes straight into the weight's own layout)
Tensor empty_like_stored(const Tensor& wt) {
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

// ---- one LSTM layer and direction ------------------------------------------------------------------------
template <typename T>
std::vector<Tensor> layer_forward(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                                  const Tensor& w_hh, const c10::optional<Tensor>& bias, const MaskView<T>& in,
                                  const MaskView<T>& rec, const std::vector<int64_t>& batch_sizes, bool reverse) {
  const Kernels<T> K = kernels<T>();
  const int64_t T_ = x.size(0), B = x.size(1), H = w_hh.size(1), Hp = padded(H), G4 = 4 * Hp;
  const int64_t chunks = Hp / UNITS;
  const bool packed = !batch_sizes.empty();
  const Steps steps(T_, B, batch_sizes, reverse);
  auto opt = x.options();

  Tensor wt_ih = chunked_t<T>(w_ih, H), wt_hh = chunked_t<T>(w_hh, H);
  Tensor bias_p = bias && bias->defined() ? chunked(*bias, H) : zeros({G4}, opt);
  Tensor gates = at::empty({T_, B, G4}, opt);
  Tensor alloc_h = packed ? zeros({T_, B, Hp}, opt) : at::empty({T_, B, Hp}, opt);
  Tensor cells = scratch(7, {T_, B, Hp}, opt, false), tanh_c = at::empty({T_, B, Hp}, opt);
  Tensor c_prev = at::empty({T_, B, Hp}, opt);
  Tensor ax = gather_steps(x, in), ah = zeros({T_, B, rec.k}, opt);
  Tensor h = padded_state(h0, B, H, opt), c = padded_state(c0, B, H, opt);

  T *G = gates.data_ptr<T>(), *hs = alloc_h.data_ptr<T>(), *cs = cells.data_ptr<T>(), *tc = tanh_c.data_ptr<T>();
  T *cp = c_prev.data_ptr<T>(), *axp = ax.data_ptr<T>(), *ahp = ah.data_ptr<T>();
  T *hp = h.data_ptr<T>(), *cc = c.data_ptr<T>();
  const T *wi = wt_ih.data_ptr<T>(), *wh = wt_hh.data_ptr<T>(), *bp = bias_p.data_ptr<T>();

  // the input products of all steps, blocked over gate columns so that a weight panel stays in cache
  for_each_panel(chunks, [&](int64_t col, int64_t width) {
    for (int64_t t = 0; t < T_; ++t) {
      K.kept_nn(B, in.k, axp + t * B * in.k, in.k, in.units(t), wi + col, G4, G + t * B * G4 + col, G4, 0, width,
                bp + col);
    }
  });

  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = steps.order[i], a = steps.active[i];
    T* a_h = ahp + t * B * rec.k;
    gather(a, hp, Hp, rec, t, a_h);
    std::memcpy(cp + t * B * Hp, cc, a * Hp * sizeof(T));
    T *g = G + t * B * G4, *ct = cs + t * B * Hp, *tt = tc + t * B * Hp, *ht = hs + t * B * Hp;
    at::parallel_for(0, chunks, 1, [&](int64_t c0_, int64_t c1_) {
      for (int64_t ch = c0_; ch < c1_; ++ch) {
        K.kept_nn(a, rec.k, a_h, rec.k, rec.units(t), wh + ch * CHUNK, G4, g + ch * CHUNK, G4, 0, CHUNK, nullptr);
        const int64_t u = ch * UNITS;
        K.cell_forward(a, UNITS, g + ch * CHUNK, g + ch * CHUNK, G4, UNITS, cp + t * B * Hp + u, ct + u, tt + u, ht + u,
                       Hp);
      }
    });
    std::memcpy(hp, ht, a * Hp * sizeof(T));
    std::memcpy(cc, ct, a * Hp * sizeof(T));
  }
  Tensor y = alloc_h.narrow(2, 0, H);
  // what the backward needs besides the inputs: the activations, tanh(c), c_prev, the gathered inputs of both
  // products and the weights in the gate layout
  return {Hp == H ? y : y.contiguous(), h.narrow(1, 0, H).contiguous(), c.narrow(1, 0, H).contiguous(), gates,
          tanh_c, c_prev, ax, ah, wt_ih, wt_hh};
}

template <typename T>
std::vector<Tensor> layer_backward(const std::vector<Tensor>& saved, const MaskView<T>& in, const MaskView<T>& rec,
                                   const std::vector<int64_t>& batch_sizes, bool reverse, int64_t n, int64_t H,
                                   const c10::optional<Tensor>& dy, const c10::optional<Tensor>& dh_n,
                                   const c10::optional<Tensor>& dc_n, bool need_x) {
  const Kernels<T> K = kernels<T>();
  const Tensor &gates = saved[0], &tanh_c = saved[1], &c_prev = saved[2], &ax = saved[3], &ah = saved[4];
  const Tensor &wt_ih = saved[5], &wt_hh = saved[6];
  const int64_t T_ = gates.size(0), B = gates.size(1), Hp = padded(H), G4 = 4 * Hp, chunks = Hp / UNITS;
  const bool packed = !batch_sizes.empty();
  const Steps steps(T_, B, batch_sizes, reverse);
  auto opt = gates.options();

  Tensor dgates = scratch(0, {T_, B, G4}, opt, packed);
  Tensor dh = padded_state(dh_n, B, H, opt), dc = padded_state(dc_n, B, H, opt);
  Tensor dy_c = dy && dy->defined() ? dy->contiguous() : Tensor();
  Tensor d_rec = at::empty({B, rec.k}, opt);
  const T *G = gates.data_ptr<T>(), *tc = tanh_c.data_ptr<T>(), *cp = c_prev.data_ptr<T>();
  const T* wh = wt_hh.data_ptr<T>();
  T *dG = dgates.data_ptr<T>(), *dhp = dh.data_ptr<T>(), *dcp = dc.data_ptr<T>(), *dr = d_rec.data_ptr<T>();
  const T* dyp = dy_c.defined() ? dy_c.data_ptr<T>() : nullptr;

  for (int64_t i = T_ - 1; i >= 0; --i) {
    const int64_t t = steps.order[i], a = steps.active[i];
    if (dyp)
      for (int64_t m = 0; m < a; ++m)
        for (int64_t u = 0; u < H; ++u) dhp[m * Hp + u] += dyp[(t * B + m) * H + u];
    const T* g = G + t * B * G4;
    T* dg = dG + t * B * G4;
    at::parallel_for(0, chunks, 1, [&](int64_t c0_, int64_t c1_) {
      for (int64_t ch = c0_; ch < c1_; ++ch) {
        const int64_t u = ch * UNITS, s = t * B * Hp + u;
        K.cell_backward(a, UNITS, g + ch * CHUNK, G4, UNITS, cp + s, tc + s, dhp + u, dcp + u, Hp, dg + ch * CHUNK);
      }
    });
    // d h_prev: kept units only, the dropped ones get zero
    std::memset(dhp, 0, a * Hp * sizeof(T));
    at::parallel_for(0, rec.k, 8, [&](int64_t j0, int64_t j1) {
      K.kept_nt(a, j1 - j0, dg, G4, rec.units(t) + j0, wh, G4, G4, dr + j0, rec.k, false);
    });
    scatter(a, dr, rec, t, dhp, Hp);
  }

  Tensor dx = need_x ? input_gradients(K, dG, stored<T>(wt_ih), in, T_, B, opt) : Tensor();
  Tensor dw_ih = at::empty({4 * H, n}, opt), dw_hh = at::empty({4 * H, H}, opt);
  T *dwi = dw_ih.data_ptr<T>(), *dwh = dw_hh.data_ptr<T>();
  const Tensor axt = transposed_steps(K, ax, 3), aht = transposed_steps(K, ah, 4);
  const T *axtp = axt.data_ptr<T>(), *ahtp = aht.data_ptr<T>();
  for_each_panel(chunks, [&](int64_t col, int64_t width) {
    // a panel's weight gradients are summed over the steps in per-thread scratch, where they stay in L2, and
    // then transposed out into torch's layout
    T* pi = scratch(1, {n, width}, opt, true).template data_ptr<T>();
    T* ph = scratch(2, {H, width}, opt, true).template data_ptr<T>();
    for (int64_t i = 0; i < T_; ++i) {
      const int64_t t = steps.order[i], a = steps.active[i];
      const T* d = dG + t * B * G4 + col;
      K.kept_tn(a, in.k, axtp + t * B * in.k, B, in.units(t), d, G4, pi, width, 0, width);
      K.kept_tn(a, rec.k, ahtp + t * B * rec.k, B, rec.units(t), d, G4, ph, width, 0, width);
    }
    unchunk_panel(K, pi, n, col, width, H, dwi);
    unchunk_panel(K, ph, H, col, width, H, dwh);
  });
  Tensor db = unchunked(dgates.view({T_ * B, G4}).sum(0), H);
  return {dx, dh.narrow(1, 0, H).contiguous(), dc.narrow(1, 0, H).contiguous(), dw_ih, dw_hh, db};
}

// ---- a masked linear map of a whole sequence ---------------------------------------------------------------
// out[t] = (a[t][:, K_t] * mult) @ wt[K_t] + bias, a [T, B, n], wt [n, N] (see as_stored); returns out and the
// gathered inputs [T, B, k] for the backward
template <typename T>
std::vector<Tensor> sequence_forward(const Tensor& a, const Tensor& wt, const MaskView<T>& mask,
                                     const c10::optional<Tensor>& bias) {
  const Kernels<T> K = kernels<T>();
  const int64_t T_ = a.size(0), B = a.size(1), n = wt.size(0), N = wt.size(1);
  const Stored<T> w_in = stored<T>(wt);
  constexpr int64_t L = 64 / sizeof(T);  // the widest vector: a block's width is padded to a multiple of it
  Tensor out = at::empty({T_, B, N}, a.options());  // written once by the products, never zeroed
  Tensor init = bias && bias->defined() ? bias->contiguous() : zeros({N}, a.options());
  Tensor ak = gather_steps(a, mask);
  const T *akp = ak.data_ptr<T>(), *ip = init.data_ptr<T>();
  T* op = out.data_ptr<T>();
  for_each_column_block(N, [&](int64_t c0, int64_t c1) {
    // the block's columns of every weight row, packed into per-thread scratch (n x wpad, aligned to whole cache
    // lines): the steps' kept rows are then read from one compact block instead of scattered rows of a wide
    // matrix; the last, narrower block runs in whole vectors too, into a local tile that is then copied out
    const int64_t w = c1 - c0, wpad = (w + L - 1) / L * L;
    const bool narrow = w < wpad;
    Tensor block = scratch(9, {n + 1 + (narrow ? B : 0), wpad}, a.options(), narrow);
    T *packed = block.data_ptr<T>(), *row = packed + n * wpad, *tile = row + wpad;
    w_in.read(K, c0, w, packed, wpad);
    std::copy_n(ip + c0, w, row);
    for (int64_t t = 0; t < T_; ++t) {
      K.kept_nn(B, mask.k, akp + t * B * mask.k, mask.k, mask.units(t), packed, wpad,
                narrow ? tile : op + t * B * N + c0, narrow ? wpad : N, 0, wpad, row);
      if (narrow)
        for (int64_t m = 0; m < B; ++m) std::copy_n(tile + m * wpad, w, op + (t * B + m) * N + c0);
    }
  });
  return {out, ak};
}

// Its gradients from the forward's gathered inputs ak: da (or undefined), dwt stored as wt is, and the bias's (or
// undefined). The bias's sums run in the weight gradient's sweep over dout, on the block each step has just read.
template <typename T>
std::vector<Tensor> sequence_backward(const Tensor& ak, const Tensor& wt, const MaskView<T>& mask, const Tensor& dout,
                                      int64_t n, bool need_input_grad, bool need_bias_grad) {
  const Kernels<T> K = kernels<T>();
  const int64_t T_ = ak.size(0), B = ak.size(1), N = wt.size(1);
  Tensor dwt = empty_like_stored(wt), db = need_bias_grad ? at::empty({N}, ak.options()) : Tensor();
  const Stored<T> dw_out = stored<T>(dwt);
  const Tensor akt = transposed_steps(K, ak, 3);
  const T *aktp = akt.data_ptr<T>(), *dp = dout.data_ptr<T>();
  T* dbp = need_bias_grad ? db.data_ptr<T>() : nullptr;
  for_each_column_block(N, [&](int64_t c0, int64_t c1) {
    // the block's gradient is summed over the steps in per-thread scratch (it stays in L2), then written out once
    const int64_t w = c1 - c0;
    T* block = scratch(10, {n, w}, ak.options(), true).template data_ptr<T>();
    if (dbp) std::fill_n(dbp + c0, w, T(0));
    for (int64_t t = 0; t < T_; ++t) {
      const T* d = dp + t * B * N + c0;
      K.kept_tn(B, mask.k, aktp + t * B * mask.k, B, mask.units(t), d, N, block, w, 0, w);
      if (dbp) K.column_sums(B, w, d, N, dbp + c0);
    }
    dw_out.write(K, c0, w, block, w);
  });
  Tensor da = need_input_grad ? input_gradients(K, dp, stored<T>(wt), mask, T_, B, ak.options()) : Tensor();
  return {da, dwt, db};
}

// ---- the kept products on a gathered block (the step primitives') -----------------------------------------
// The step primitives' operands: every operand a contiguous 2-D tensor of the first one's dtype, of the given
// size (-1: any)
void check_tensors(std::initializer_list<std::tuple<const Tensor*, int64_t, int64_t>> operands) {
  const auto dtype = std::get<0>(*operands.begin())->scalar_type();
  for (const auto& [t, rows, cols] : operands)
    TORCH_CHECK(t->dim() == 2 && t->is_contiguous() && t->scalar_type() == dtype && (rows < 0 || t->size(0) == rows) &&
                    (cols < 0 || t->size(1) == cols),
                "the native operations take contiguous 2-D tensors of one dtype and matching sizes; got ", t->sizes(),
                " for one of them");
}

// and keep 1-D int64 within wt's rows (wt first among the operands)
void check_operands(const Tensor& keep, const Tensor& wt,
                    std::initializer_list<std::tuple<const Tensor*, int64_t, int64_t>> operands) {
  TORCH_CHECK(keep.dim() == 1 && keep.is_contiguous() && keep.scalar_type() == at::kLong, "keep must be 1-D int64");
  // a scan of the raw indices: keep.min() and keep.max() would be two torch operations on every step's call
  const int64_t* units = keep.data_ptr<int64_t>();
  const int64_t rows = wt.size(0);
  TORCH_CHECK(std::all_of(units, units + keep.numel(), [rows](int64_t u) { return u >= 0 && u < rows; }),
              "keep holds a unit outside [0, ", rows, ")");
  check_tensors(operands);
}

// From this many rows on, a product copies the kept rows of the weight once and runs as a library (MKL) product:
// the copy is then a small share of the work, and the library's blocking for large products beats the kernels'
// (measured on AVX-512, n = 650, N = 2600: the kernels reach about 0.5 of the ideal at M = 160 to 700, a gather
// and MKL 0.7 to 0.95; at M = 64 the two are even, and below it the kernels are ahead)
constexpr int64_t LIBRARY_ROWS = 128;

// The three kept products on a gathered, scaled block a [M, k] (operands as check_operands takes them), for the
// step primitives below.
// out += a @ wt[keep]
void product(const Tensor& a, const Tensor& keep, const Tensor& wt, Tensor& out) {
  if (a.size(0) >= LIBRARY_ROWS) return void(out.addmm_(a, wt.index_select(0, keep)));
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "kept_product", [&] {
    const int64_t M = a.size(0), k = keep.size(0), N = wt.size(1);
    for_each_column_run(N, [&](int64_t c0, int64_t c1, int64_t) {
      kernels<scalar_t>().kept_nn(M, k, a.data_ptr<scalar_t>(), k, keep.data_ptr<int64_t>(), wt.data_ptr<scalar_t>(),
                                  N, out.data_ptr<scalar_t>(), N, c0, c1, nullptr);
    });
  });
}

// out[m, j] = sum_n dout[m, n] * wt[keep[j], n]
void input_grad(const Tensor& dout, const Tensor& keep, const Tensor& wt, Tensor& out) {
  if (dout.size(0) >= LIBRARY_ROWS) return void(at::mm_out(out, dout, wt.index_select(0, keep).t()));
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "kept_input_grad", [&] {
    const int64_t M = dout.size(0), k = keep.size(0), N = wt.size(1);
    at::parallel_for(0, k, 16, [&](int64_t j0, int64_t j1) {
      kernels<scalar_t>().kept_nt(M, j1 - j0, dout.data_ptr<scalar_t>(), N, keep.data_ptr<int64_t>() + j0,
                                  wt.data_ptr<scalar_t>(), N, N, out.data_ptr<scalar_t>() + j0, k, false);
    });
  });
}

// dwt[keep[j], :] += sum_m a[m, j] * dout[m, :]
void weight_grad(const Tensor& a, const Tensor& keep, const Tensor& dout, Tensor& dwt) {
  if (a.size(0) >= LIBRARY_ROWS) return void(dwt.index_add_(0, keep, at::mm(a.t(), dout)));
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "kept_weight_grad", [&] {
    const Kernels<scalar_t> K = kernels<scalar_t>();
    const int64_t M = a.size(0), k = keep.size(0), N = dout.size(1);
    scalar_t* a_t = scratch(11, {k, M}, a.options(), false).template data_ptr<scalar_t>();
    K.transpose(M, k, a.data_ptr<scalar_t>(), k, a_t, M);  // the kernels read the block transposed
    // each thread sweeps the kept rows from a starting row of its own (thread i of n from about i k / n, in whole
    // tiles of rows, then round to its start): with every thread on the same rows at once, each on its share of
    // the columns, the 20-row product of 650 x 2600 ran 5-10% slower on two threads
    const int64_t* idx = keep.data_ptr<int64_t>();
    const scalar_t* d = dout.data_ptr<scalar_t>();
    scalar_t* dw = dwt.data_ptr<scalar_t>();
    for_each_column_run(N, [&](int64_t c0, int64_t c1, int64_t) {
      constexpr int64_t TILES = 12;  // a multiple of every instruction set's tile of kept rows
      const int64_t first = k * at::get_thread_num() / std::max(1, at::get_num_threads()) / TILES * TILES;
      K.kept_tn(M, k - first, a_t + first * M, M, idx + first, d, N, dw, N, c0, c1);
      if (first) K.kept_tn(M, first, a_t, M, idx, d, N, dw, N, c0, c1);
    });
  });
}

// ---- one step's primitives (the seam's kept products and cell, for step-by-step loops under autograd) ------
// a, dout, out, da, dwt contiguous 2-D; keep [k] int64; the multipliers are values [k] or scale. The gathered
// block (a[:, K] * mult) of a step lives in scratch slot 8.
template <typename T>
MaskView<T> one_set(const Tensor& keep, const c10::optional<Tensor>& values, double scale) {
  const Tensor keep2 = keep.view({1, -1});
  return view<T>(keep2, values && values->defined() ? c10::optional<Tensor>(values->view({1, -1})) : c10::nullopt,
                 scale, {0});
}

template <typename T>
Tensor gathered_step(const Tensor& a, const MaskView<T>& mask) {
  Tensor ak = scratch(8, {a.size(0), mask.k}, a.options(), false);
  gather(a.size(0), a.data_ptr<T>(), a.size(1), mask, 0, ak.data_ptr<T>());
  return ak;
}

// out += (a[:, K] * mult) @ wt[K]
template <typename T>
void step_product(const Tensor& a, const Tensor& keep, const MaskView<T>& mask, const Tensor& wt, Tensor& out) {
  product(gathered_step(a, mask), keep, wt, out);
}

// da[:, K] = mult * (dout @ wt[K]^T), the other columns zero
template <typename T>
void step_input_grad(const Tensor& dout, const Tensor& keep, const MaskView<T>& mask, const Tensor& wt, Tensor& da) {
  Tensor buffer = scratch(8, {dout.size(0), mask.k}, dout.options(), false);
  input_grad(dout, keep, wt, buffer);
  da.zero_();
  scatter(dout.size(0), buffer.data_ptr<T>(), mask, 0, da.data_ptr<T>(), da.size(1));
}

// dwt[K] += (a[:, K] * mult)^T @ dout
template <typename T>
void step_weight_grad(const Tensor& a, const Tensor& keep, const MaskView<T>& mask, const Tensor& dout, Tensor& dwt) {
  weight_grad(gathered_step(a, mask), keep, dout, dwt);
}

// The cell in torch's gate layout ([M, 4H]: gates i, f, g, o of H units each), in chunks of UNITS units, in
// parallel over the chunks once the work is large enough to pay for a parallel region
template <typename F>
void for_each_cell_chunk(int64_t M, int64_t H, F&& chunk) {
  if (M == 0) return;
  at::parallel_for(0, (H + UNITS - 1) / UNITS, std::max<int64_t>(1, 16384 / (M * CHUNK)), [&](int64_t b0, int64_t b1) {
    for (int64_t ch = b0; ch < b1; ++ch) chunk(ch * UNITS, static_cast<int>(std::min<int64_t>(UNITS, H - ch * UNITS)));
  });
}

template <typename T>
void step_cell_forward(const Tensor& gates, const Tensor& c_prev, Tensor& act, Tensor& c, Tensor& tanh_c, Tensor& h) {
  const int64_t M = gates.size(0), H = c_prev.size(1);
  const Kernels<T> K = kernels<T>();
  for_each_cell_chunk(M, H, [&](int64_t u, int units) {
    K.cell_forward(M, units, gates.data_ptr<T>() + u, act.data_ptr<T>() + u, 4 * H, H, c_prev.data_ptr<T>() + u,
                   c.data_ptr<T>() + u, tanh_c.data_ptr<T>() + u, h.data_ptr<T>() + u, H);
  });
}

template <typename T>
void step_cell_backward(const Tensor& act, const Tensor& c_prev, const Tensor& tanh_c, const Tensor& dh, Tensor& dc,
                        Tensor& dgates) {
  const int64_t M = act.size(0), H = c_prev.size(1);
  const Kernels<T> K = kernels<T>();
  for_each_cell_chunk(M, H, [&](int64_t u, int units) {
    K.cell_backward(M, units, act.data_ptr<T>() + u, 4 * H, H, c_prev.data_ptr<T>() + u, tanh_c.data_ptr<T>() + u,
                    dh.data_ptr<T>() + u, dc.data_ptr<T>() + u, H, dgates.data_ptr<T>() + u);
  });
}

// ---- the bindings: dtype dispatch ------------------------------------------------------------------------
using MaskArgs = std::tuple<Tensor, c10::optional<Tensor>, double, std::vector<int64_t>>;

std::vector<Tensor> sequence_product(const Tensor& a, const Tensor& wt, const MaskArgs& mask,
                                     const c10::optional<Tensor>& bias) {
  return AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sequence_product", [&] {
    return sequence_forward<scalar_t>(a.contiguous(), as_stored(wt),
                                      view<scalar_t>(std::get<0>(mask), std::get<1>(mask), std::get<2>(mask),
                                                     std::get<3>(mask)), bias);
  });
}

Tensor gathered(const Tensor& a, const MaskArgs& mask) {
  return AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "gathered", [&] {
    return gather_steps<scalar_t>(a.contiguous(), view<scalar_t>(std::get<0>(mask), std::get<1>(mask),
                                                                 std::get<2>(mask), std::get<3>(mask)));
  });
}

std::vector<Tensor> sequence_gradients(const Tensor& ak, const Tensor& wt, const MaskArgs& mask, const Tensor& dout,
                                       int64_t n, bool need_input_grad, bool need_bias_grad) {
  return AT_DISPATCH_FLOATING_TYPES(ak.scalar_type(), "sequence_backward", [&] {
    return sequence_backward<scalar_t>(ak, as_stored(wt),
                                       view<scalar_t>(std::get<0>(mask), std::get<1>(mask), std::get<2>(mask),
                                                      std::get<3>(mask)), dout.contiguous(), n, need_input_grad,
                                       need_bias_grad);
  });
}

std::vector<Tensor> lstm_layer_forward(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                                       const Tensor& w_hh, const c10::optional<Tensor>& bias, const MaskArgs& in,
                                       const MaskArgs& rec, const std::vector<int64_t>& batch_sizes, bool reverse) {
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_layer_forward", [&] {
    return layer_forward<scalar_t>(
        x.contiguous(), h0, c0, w_ih.contiguous(), w_hh.contiguous(), bias,
        view<scalar_t>(std::get<0>(in), std::get<1>(in), std::get<2>(in), std::get<3>(in)),
        view<scalar_t>(std::get<0>(rec), std::get<1>(rec), std::get<2>(rec), std::get<3>(rec)), batch_sizes,
        reverse);
  });
}

std::vector<Tensor> lstm_layer_backward(const std::vector<Tensor>& saved, const MaskArgs& in, const MaskArgs& rec,
                                        const std::vector<int64_t>& batch_sizes, bool reverse, int64_t n, int64_t H,
                                        const c10::optional<Tensor>& dy, const c10::optional<Tensor>& dh_n,
                                        const c10::optional<Tensor>& dc_n, bool need_x) {
  return AT_DISPATCH_FLOATING_TYPES(saved[0].scalar_type(), "lstm_layer_backward", [&] {
    return layer_backward<scalar_t>(
        saved, view<scalar_t>(std::get<0>(in), std::get<1>(in), std::get<2>(in), std::get<3>(in)),
        view<scalar_t>(std::get<0>(rec), std::get<1>(rec), std::get<2>(rec), std::get<3>(rec)), batch_sizes,
        reverse, n, H, dy, dh_n, dc_n, need_x);
  });
}


// ---- the step primitives' bindings ------------------------------------------------------------------------
void kept_step_product(const Tensor& a, const Tensor& keep, const c10::optional<Tensor>& values, double scale,
                       const Tensor& wt, Tensor& out) {
  check_operands(keep, wt, {{&wt, -1, -1}, {&a, -1, wt.size(0)}, {&out, a.size(0), wt.size(1)}});
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "kept_step_product",
                             [&] { step_product<scalar_t>(a, keep, one_set<scalar_t>(keep, values, scale), wt, out); });
}

void kept_step_input_grad(const Tensor& dout, const Tensor& keep, const c10::optional<Tensor>& values, double scale,
                          const Tensor& wt, Tensor& da) {
  check_operands(keep, wt, {{&wt, -1, -1}, {&dout, -1, wt.size(1)}, {&da, dout.size(0), wt.size(0)}});
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "kept_step_input_grad", [&] {
    step_input_grad<scalar_t>(dout, keep, one_set<scalar_t>(keep, values, scale), wt, da);
  });
}

void kept_step_weight_grad(const Tensor& a, const Tensor& keep, const c10::optional<Tensor>& values, double scale,
                           const Tensor& dout, Tensor& dwt) {
  check_operands(keep, dwt, {{&dwt, -1, -1}, {&a, -1, dwt.size(0)}, {&dout, a.size(0), dwt.size(1)}});
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "kept_step_weight_grad", [&] {
    step_weight_grad<scalar_t>(a, keep, one_set<scalar_t>(keep, values, scale), dout, dwt);
  });
}

void cell_forward(const Tensor& gates, const Tensor& c_prev, Tensor& act, Tensor& c, Tensor& tanh_c, Tensor& h) {
  const int64_t M = c_prev.size(0), H = c_prev.size(1);
  check_tensors({{&gates, M, 4 * H}, {&c_prev, M, H}, {&act, M, 4 * H}, {&c, M, H}, {&tanh_c, M, H}, {&h, M, H}});
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "cell_forward",
                             [&] { step_cell_forward<scalar_t>(gates, c_prev, act, c, tanh_c, h); });
}

void cell_backward(const Tensor& act, const Tensor& c_prev, const Tensor& tanh_c, const Tensor& dh, Tensor& dc,
                   Tensor& dgates) {
  const int64_t M = c_prev.size(0), H = c_prev.size(1);
  check_tensors({{&act, M, 4 * H}, {&c_prev, M, H}, {&tanh_c, M, H}, {&dh, M, H}, {&dc, M, H}, {&dgates, M, 4 * H}});
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "cell_backward",
                             [&] { step_cell_backward<scalar_t>(act, c_prev, tanh_c, dh, dc, dgates); });
}

}  // namespace
}  // namespace structdrop

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "onmt_structdrop's native CPU engine (see onmt_structdrop/ops/native_backend.py)";
  m.def("isa", [] { return structdrop::isa_name(); }, "the instruction set the kernels run with");
  m.def("set_isa", &structdrop::set_isa, "run the kernels built for another instruction set (tests)");
  m.def("sequence_product", &structdrop::sequence_product);
  m.def("sequence_backward", &structdrop::sequence_gradients);
  m.def("gathered", &structdrop::gathered, "the kept columns of every step, multipliers applied");
  m.def("lstm_layer_forward", &structdrop::lstm_layer_forward);
  m.def("lstm_layer_backward", &structdrop::lstm_layer_backward);
  m.def("kept_step_product", &structdrop::kept_step_product, "out += (a[:, K] * mult) @ wt[K]");
  m.def("kept_step_input_grad", &structdrop::kept_step_input_grad, "da[:, K] = mult * (dout @ wt[K]^T), zero elsewhere");
  m.def("kept_step_weight_grad", &structdrop::kept_step_weight_grad, "dwt[K] += (a[:, K] * mult)^T @ dout");
  m.def("cell_forward", &structdrop::cell_forward, "the LSTM cell in torch's gate layout, into act, c, tanh_c, h");
  m.def("cell_backward", &structdrop::cell_backward, "its gradient into dgates; dc becomes that of c_prev");
}
