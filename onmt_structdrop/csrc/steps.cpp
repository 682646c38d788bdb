// One step's primitives of the seam (its kept products and the LSTM cell in torch's gate layout), for
// step-by-step loops under autograd (the input-feed decoder), with the checks of their operands.
#include "engine.h"

namespace structdrop {
namespace {

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

}  // namespace

// ---- the entry points: dtype dispatch ----------------------------------------------------------------------
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

}  // namespace structdrop
