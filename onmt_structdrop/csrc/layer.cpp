// One LSTM layer and direction: the forward and backward time loops in the gate layout of kernels.h (the weights
// transposed once per call so that the four gates of UNITS units sit side by side, and the recurrent product of
// a block of gate columns and the cell of those units run in one pass).
#include "engine.h"

namespace structdrop {
namespace {

// ---- the gate layout of kernels.h ------------------------------------------------------------------------
int64_t padded(int64_t H) { return (H + UNITS - 1) / UNITS * UNITS; }

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

}  // namespace

// ---- the entry points: dtype dispatch ----------------------------------------------------------------------
std::vector<Tensor> lstm_layer_forward(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                                       const Tensor& w_hh, const c10::optional<Tensor>& bias, const MaskArgs& in,
                                       const MaskArgs& rec, const std::vector<int64_t>& batch_sizes, bool reverse) {
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_layer_forward", [&] {
    return layer_forward<scalar_t>(x.contiguous(), h0, c0, w_ih.contiguous(), w_hh.contiguous(), bias,
                                   view<scalar_t>(in), view<scalar_t>(rec), batch_sizes, reverse);
  });
}

std::vector<Tensor> lstm_layer_backward(const std::vector<Tensor>& saved, const MaskArgs& in, const MaskArgs& rec,
                                        const std::vector<int64_t>& batch_sizes, bool reverse, int64_t n, int64_t H,
                                        const c10::optional<Tensor>& dy, const c10::optional<Tensor>& dh_n,
                                        const c10::optional<Tensor>& dc_n, bool need_x) {
  return AT_DISPATCH_FLOATING_TYPES(saved[0].scalar_type(), "lstm_layer_backward", [&] {
    return layer_backward<scalar_t>(saved, view<scalar_t>(in), view<scalar_t>(rec), batch_sizes, reverse, n, H, dy,
                                    dh_n, dc_n, need_x);
  });
}

}  // namespace structdrop
