// mlx primitives around winograd_conv.h, attention.h, group_norm.h, layer_norm.h and geglu.h, and their Python bindings (nanobind, in mlx's own domain so that
// mlx.core.array crosses over). Built on first use by mlx_musicviz/ops/kernels/__init__.py.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>

#include <optional>
#include <sched.h>
#include <stdexcept>
#include <string>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

#include "attention.h"
#include "geglu.h"
#include "group_norm.h"
#include "layer_norm.h"
#include "winograd_conv.h"

namespace nb = nanobind;
namespace mx = mlx::core;

namespace {

int cpu_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// A primitive of these kernels: CPU only, its output allocated and its arrays registered with the
// CPU stream's encoder by `encoder_for` before the kernel is dispatched.
class CpuPrimitive : public mx::UnaryPrimitive {
 public:
  using mx::UnaryPrimitive::UnaryPrimitive;

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error(std::string(name()) + " runs on the CPU only");
  }

 protected:
  mx::cpu::CommandEncoder& encoder_for(const std::vector<mx::array>& inputs, mx::array& out) {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& a : inputs) encoder.set_input_array(a);
    encoder.set_output_array(out);
    return encoder;
  }
};

class WinogradConv3x3 : public CpuPrimitive {
 public:
  WinogradConv3x3(mx::Stream stream, bool has_bias, bool has_residual, bool relu, bool upsample)
      : CpuPrimitive(stream), has_bias_(has_bias), has_residual_(has_residual), relu_(relu), upsample_(upsample) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const auto& x = inputs[0];
    const auto& weight = inputs[1];
    const mx::array* bias = has_bias_ ? &inputs[2] : nullptr;
    const mx::array* residual = has_residual_ ? &inputs[has_bias_ ? 3 : 2] : nullptr;
    auto& encoder = encoder_for(inputs, out);
    // the transformed kernel: working space held by the encoder until the task has run
    mx::array u(mx::allocator::malloc(16 * weight.size() / 9 * sizeof(float)), {static_cast<int>(16 * weight.size() / 9)},
                mx::float32);
    musicviz::Conv3x3 k{x.data<float>(),
                        weight.data<float>(),
                        bias ? bias->data<float>() : nullptr,
                        residual ? residual->data<float>() : nullptr,
                        out.data<float>(),
                        out.shape(0),
                        out.shape(1),
                        out.shape(2),
                        x.shape(3),
                        out.shape(3),
                        relu_,
                        upsample_};
    float* workspace = u.data<float>();
    encoder.add_temporary(std::move(u));
    encoder.dispatch([k, workspace]() { musicviz::conv3x3_winograd(k, workspace, cpu_threads()); });
  }


  const char* name() const override { return "WinogradConv3x3"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const WinogradConv3x3&>(other);
    return has_bias_ == o.has_bias_ && has_residual_ == o.has_residual_ && relu_ == o.relu_ && upsample_ == o.upsample_;
  }

 private:
  bool has_bias_, has_residual_, relu_, upsample_;
};

mx::array conv3x3(const mx::array& x, const mx::array& weight, const std::optional<mx::array>& bias,
                  const std::optional<mx::array>& residual, bool relu, bool upsample) {
  if (x.ndim() != 4 || weight.ndim() != 4 || weight.shape(1) != 3 || weight.shape(2) != 3 || weight.shape(3) != x.shape(3))
    throw std::invalid_argument("conv3x3: x (N, H, W, C) and weight (O, 3, 3, C) expected");
  if (x.dtype() != mx::float32 || weight.dtype() != mx::float32)
    throw std::invalid_argument("conv3x3: float32 only");
  const int scale = upsample ? 2 : 1;
  const mx::Shape shape{x.shape(0), x.shape(1) * scale, x.shape(2) * scale, weight.shape(0)};
  if (!musicviz::winograd_supports(shape[1], shape[2], x.shape(3), weight.shape(0)))
    throw std::invalid_argument("conv3x3: even output sides, channels a multiple of 16 and outputs of 64 expected");
  auto s = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs{mx::contiguous(x, false, s), mx::contiguous(weight, false, s)};
  if (bias) {
    if (bias->ndim() != 1 || bias->shape(0) != shape[3] || bias->dtype() != mx::float32)
      throw std::invalid_argument("conv3x3: bias (O,) float32 expected");
    inputs.push_back(mx::contiguous(*bias, false, s));
  }
  if (residual) {
    if (residual->shape() != shape || residual->dtype() != mx::float32)
      throw std::invalid_argument("conv3x3: residual of the output's shape, float32, expected");
    inputs.push_back(mx::contiguous(*residual, false, s));
  }
  return mx::array(shape, mx::float32,
                   std::make_shared<WinogradConv3x3>(s, bias.has_value(), residual.has_value(), relu, upsample),
                   std::move(inputs));
}

class FusedAttention : public CpuPrimitive {
 public:
  FusedAttention(mx::Stream stream, int heads, float scale) : CpuPrimitive(stream), heads_(heads), scale_(scale) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const auto &q = inputs[0], &k = inputs[1], &v = inputs[2];
    auto& encoder = encoder_for(inputs, out);
    musicviz::Attention a{q.data<float>(), k.data<float>(), v.data<float>(), out.data<float>(),
                          q.shape(0),      q.shape(1),      k.shape(1),      heads_,
                          q.shape(2) / heads_, scale_};
    encoder.dispatch([a]() { musicviz::attention_fused(a, cpu_threads()); });
  }


  const char* name() const override { return "FusedAttention"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const FusedAttention&>(other);
    return heads_ == o.heads_ && scale_ == o.scale_;
  }

 private:
  int heads_;
  float scale_;
};

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, int heads, float scale) {
  if (q.ndim() != 3 || k.ndim() != 3 || v.shape() != k.shape() || k.shape(0) != q.shape(0) || k.shape(2) != q.shape(2))
    throw std::invalid_argument("attention: q (B, N, H * d), k and v (B, M, H * d) expected");
  if (q.dtype() != mx::float32 || k.dtype() != mx::float32 || v.dtype() != mx::float32)
    throw std::invalid_argument("attention: float32 only");
  if (heads <= 0 || q.shape(2) % heads != 0 || !musicviz::attention_supports(k.shape(1), q.shape(2) / heads))
    throw std::invalid_argument("attention: a head size that is a multiple of 64 expected");
  auto s = mx::default_stream(mx::Device::cpu);
  return mx::array(q.shape(), mx::float32, std::make_shared<FusedAttention>(s, heads, scale),
                   {mx::contiguous(q, false, s), mx::contiguous(k, false, s), mx::contiguous(v, false, s)});
}

// the (C,) float32 weight and bias of a norm over C channels, appended to inputs where given
void push_affine(std::vector<mx::array>& inputs, const std::optional<mx::array>& weight,
                 const std::optional<mx::array>& bias, int c, const char* what, mx::Stream s) {
  for (const auto* affine : {&weight, &bias})
    if (*affine) {
      if ((*affine)->ndim() != 1 || (*affine)->shape(0) != c || (*affine)->dtype() != mx::float32)
        throw std::invalid_argument(std::string(what) + ": weight and bias (C,) float32 expected");
      inputs.push_back(mx::contiguous(**affine, false, s));
    }
}

class FusedGroupNorm : public CpuPrimitive {
 public:
  FusedGroupNorm(mx::Stream stream, int groups, float eps, bool has_weight, bool has_bias, bool silu)
      : CpuPrimitive(stream), groups_(groups), eps_(eps), has_weight_(has_weight), has_bias_(has_bias), silu_(silu) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const auto& x = inputs[0];
    const mx::array* weight = has_weight_ ? &inputs[1] : nullptr;
    const mx::array* bias = has_bias_ ? &inputs[has_weight_ ? 2 : 1] : nullptr;
    auto& encoder = encoder_for(inputs, out);
    const int c = x.shape(-1), n = x.shape(0);
    musicviz::GroupNorm g{x.data<float>(),
                          weight ? weight->data<float>() : nullptr,
                          bias ? bias->data<float>() : nullptr,
                          out.data<float>(),
                          n,
                          static_cast<long>(x.size() / (static_cast<size_t>(n) * c)),
                          c,
                          groups_,
                          eps_,
                          silu_};
    encoder.dispatch([g]() { musicviz::group_norm_fused(g, cpu_threads()); });
  }


  const char* name() const override { return "FusedGroupNorm"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const FusedGroupNorm&>(other);
    return groups_ == o.groups_ && eps_ == o.eps_ && has_weight_ == o.has_weight_ && has_bias_ == o.has_bias_ &&
           silu_ == o.silu_;
  }

 private:
  int groups_;
  float eps_;
  bool has_weight_, has_bias_, silu_;
};

mx::array group_norm(const mx::array& x, int groups, float eps, const std::optional<mx::array>& weight,
                     const std::optional<mx::array>& bias, bool silu) {
  if (x.ndim() < 2 || x.size() == 0) throw std::invalid_argument("group_norm: x (N, ..., C) expected");
  if (x.dtype() != mx::float32) throw std::invalid_argument("group_norm: float32 only");
  const int c = x.shape(-1);
  if (!musicviz::group_norm_supports(c, groups))
    throw std::invalid_argument("group_norm: channels a multiple of 16 and of the group count expected");
  auto s = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs{mx::contiguous(x, false, s)};
  push_affine(inputs, weight, bias, c, "group_norm", s);
  return mx::array(x.shape(), mx::float32,
                   std::make_shared<FusedGroupNorm>(s, groups, eps, weight.has_value(), bias.has_value(), silu),
                   std::move(inputs));
}

class FusedGeglu : public CpuPrimitive {
 public:
  explicit FusedGeglu(mx::Stream stream) : CpuPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const auto& x = inputs[0];
    auto& encoder = encoder_for(inputs, out);
    const int d = out.shape(-1);
    musicviz::Geglu g{x.data<float>(), out.data<float>(), static_cast<long>(out.size() / d), d};
    encoder.dispatch([g]() { musicviz::geglu_fused(g, cpu_threads()); });
  }


  const char* name() const override { return "FusedGeglu"; }

  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

mx::array geglu(const mx::array& x) {
  if (x.ndim() < 1 || x.size() == 0) throw std::invalid_argument("geglu: x (..., 2 * D) expected");
  if (x.dtype() != mx::float32) throw std::invalid_argument("geglu: float32 only");
  if (x.shape(-1) % 2 != 0 || !musicviz::geglu_supports(x.shape(-1) / 2))
    throw std::invalid_argument("geglu: a last axis of 2 * D with D a multiple of 16 expected");
  auto shape = x.shape();
  shape.back() /= 2;
  auto s = mx::default_stream(mx::Device::cpu);
  return mx::array(shape, mx::float32, std::make_shared<FusedGeglu>(s), {mx::contiguous(x, false, s)});
}

class FusedLayerNorm : public CpuPrimitive {
 public:
  FusedLayerNorm(mx::Stream stream, float eps, bool has_weight, bool has_bias)
      : CpuPrimitive(stream), eps_(eps), has_weight_(has_weight), has_bias_(has_bias) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const auto& x = inputs[0];
    const mx::array* weight = has_weight_ ? &inputs[1] : nullptr;
    const mx::array* bias = has_bias_ ? &inputs[has_weight_ ? 2 : 1] : nullptr;
    auto& encoder = encoder_for(inputs, out);
    const int c = x.shape(-1);
    musicviz::LayerNorm g{x.data<float>(), weight ? weight->data<float>() : nullptr, bias ? bias->data<float>() : nullptr,
                          out.data<float>(), static_cast<long>(x.size() / c), c, eps_};
    encoder.dispatch([g]() { musicviz::layer_norm_fused(g, cpu_threads()); });
  }


  const char* name() const override { return "FusedLayerNorm"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const FusedLayerNorm&>(other);
    return eps_ == o.eps_ && has_weight_ == o.has_weight_ && has_bias_ == o.has_bias_;
  }

 private:
  float eps_;
  bool has_weight_, has_bias_;
};

mx::array layer_norm(const mx::array& x, float eps, const std::optional<mx::array>& weight,
                     const std::optional<mx::array>& bias) {
  if (x.ndim() < 1 || x.size() == 0) throw std::invalid_argument("layer_norm: x (..., C) expected");
  if (x.dtype() != mx::float32) throw std::invalid_argument("layer_norm: float32 only");
  const int c = x.shape(-1);
  if (!musicviz::layer_norm_supports(c)) throw std::invalid_argument("layer_norm: channels a multiple of 16 expected");
  auto s = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs{mx::contiguous(x, false, s)};
  push_affine(inputs, weight, bias, c, "layer_norm", s);
  return mx::array(x.shape(), mx::float32,
                   std::make_shared<FusedLayerNorm>(s, eps, weight.has_value(), bias.has_value()), std::move(inputs));
}

}  // namespace

NB_MODULE(_musicviz_kernels, m) {
  nb::module_::import_("mlx.core");
  m.def("conv3x3", &conv3x3, nb::arg("x"), nb::arg("weight"), nb::arg("bias") = nb::none(),
        nb::arg("residual") = nb::none(), nb::arg("relu") = false, nb::arg("upsample") = false,
        "3x3 convolution, stride 1, padding 1, float32 NHWC on the CPU, by fused Winograd F(2x2, 3x3): "
        "relu(conv(upsample?(x)) + bias + residual).");
  m.def("attention", &attention, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("heads"), nb::arg("scale"),
        "softmax(q k^T * scale) v per head, fused, over float32 (B, tokens, heads * d) rows on the CPU.");
  m.def("group_norm", &group_norm, nb::arg("x"), nb::arg("groups"), nb::arg("eps"), nb::arg("weight") = nb::none(),
        nb::arg("bias") = nb::none(), nb::arg("silu") = false,
        "silu?(GroupNorm(x) * weight + bias) over float32 (N, ..., C) on the CPU, statistics per image and group.");
  m.def("layer_norm", &layer_norm, nb::arg("x"), nb::arg("eps"), nb::arg("weight") = nb::none(),
        nb::arg("bias") = nb::none(), "LayerNorm(x) * weight + bias over the last axis of float32 x, on the CPU.");
  m.def("geglu", &geglu, nb::arg("x"),
        "h * gelu(gate) (exact GELU) for float32 x = [h | gate] along its last axis, on the CPU.");
}
