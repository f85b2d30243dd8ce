// Python bindings of the C++ CPU kernels (module fastmma._C).
#include <torch/extension.h>

#include "causal_attention.h"
#include "cross_entropy.h"
#include "few_rows_linear.h"
#include "norm_adapter.h"
#include "outputs.h"
#include "rms_norm.h"
#include "rotary.h"
#include "swiglu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "fastmma's C++ CPU kernels";
  module.def("rms_norm_adapter_forward", &fastmma::rms_norm_adapter_forward,
             "Fused RMSNorm + MMA adapter forward: returns (y, rstd, h)", pybind11::arg("x"),
             pybind11::arg("norm_weight"), pybind11::arg("eps"), pybind11::arg("down_weight"),
             pybind11::arg("down_bias"), pybind11::arg("up_table"), pybind11::arg("bias_table"),
             pybind11::arg("table_index"), pybind11::arg("h_mask"));
  module.def("rms_norm_adapter_backward", &fastmma::rms_norm_adapter_backward,
             "Fused RMSNorm + MMA adapter backward: returns (grad_x, grad_norm_weight, grad_down_weight, "
             "grad_down_bias, grad_up_table, grad_bias_table), None where not asked for",
             pybind11::arg("grad_y"), pybind11::arg("x"), pybind11::arg("norm_weight"), pybind11::arg("rstd"),
             pybind11::arg("h"), pybind11::arg("h_mask"), pybind11::arg("down_weight"), pybind11::arg("up_table"),
             pybind11::arg("table_index"), pybind11::arg("need_grad_x"), pybind11::arg("need_grad_norm_weight"),
             pybind11::arg("need_grad_down"), pybind11::arg("need_grad_tables"));
  module.def("swiglu_forward", &fastmma::swiglu_forward, "Fused silu(gate) * up", pybind11::arg("gate"),
             pybind11::arg("up"));
  module.def("swiglu_backward", &fastmma::swiglu_backward,
             "Backward of silu(gate) * up: returns (grad_gate, grad_up), None where not asked for",
             pybind11::arg("grad_out"), pybind11::arg("gate"), pybind11::arg("up"), pybind11::arg("need_grad_gate"),
             pybind11::arg("need_grad_up"));
  module.def("cross_entropy_grad_", &fastmma::cross_entropy_grad_,
             "Softmax cross-entropy of vocab-major logits [V, C] against targets [C]: overwrites the logits with "
             "grad_scale * (softmax - onehot) and returns the summed loss",
             pybind11::arg("logits"), pybind11::arg("targets"), pybind11::arg("grad_scale"));
  module.def("few_rows_linear_forward", &fastmma::few_rows_linear_forward,
             "A frozen Linear on 1 to 8 rows, each weight row read once: returns x @ weight.T + bias",
             pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"));
  module.def("few_rows_linear_backward", &fastmma::few_rows_linear_backward,
             "Input gradient of the few-rows Linear: returns grad_y @ weight", pybind11::arg("grad_y"),
             pybind11::arg("weight"));
  module.def("causal_attention_forward", &fastmma::causal_attention_forward,
             "Causal self-attention of query [B, H, L, d] over key / value [B, KV, L, d]: returns (out [B, L, H, d], "
             "lse [B, H, L] float32)", pybind11::arg("query"), pybind11::arg("key"), pybind11::arg("value"),
             pybind11::arg("scale"));
  module.def("causal_attention_backward", &fastmma::causal_attention_backward,
             "Backward of causal_attention_forward from q, k, v and the lse (no output): returns (grad_query, "
             "grad_key, grad_value)", pybind11::arg("grad_out"), pybind11::arg("query"), pybind11::arg("key"),
             pybind11::arg("value"), pybind11::arg("lse"), pybind11::arg("scale"));
  module.def("attention_gemm_backend", &fastmma::attention_gemm_backend,
             "Tests: the GEMM of the attention blocks, 'blas' (the BLAS sgemm PyTorch's CPU library exports) or 'aten'");
  module.def("force_aten_gemm", &fastmma::force_aten_gemm,
             "Tests: run the attention blocks' GEMMs through ATen even where BLAS sgemm exists",
             pybind11::arg("enabled"));
  module.def("rotary_forward", &fastmma::rotary_forward,
             "Rotary position embedding of x [B, L, heads, d] with cos / sin [B or 1, L, d]: "
             "x * cos + rotate_half(x) * sin", pybind11::arg("x"), pybind11::arg("cos"), pybind11::arg("sin"));
  module.def("rotary_backward", &fastmma::rotary_backward,
             "Input gradient of rotary_forward: grad * cos - rotate_half(grad * sin)", pybind11::arg("grad_out"),
             pybind11::arg("cos"), pybind11::arg("sin"));
  module.def("rms_norm_input_grad", &fastmma::rms_norm_input_grad,
             "Input gradient of a frozen RMSNorm from its input and rstd: rstd * (g - n * mean(g * n)), g = grad_y * "
             "weight, n = x * rstd", pybind11::arg("grad_y"), pybind11::arg("x"), pybind11::arg("weight"),
             pybind11::arg("rstd"));
  module.def("set_poison_outputs", &fastmma::set_poison_outputs,
             "Tests: fill every output the kernels allocate with NaN before computing it", pybind11::arg("enabled"));
}
