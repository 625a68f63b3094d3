/* The small layer of oneDNN-backed operations the models are built from.
 *
 * Activations are channels-last everywhere: an image batch is [n, h, w, c]
 * (NHWC, the layout oneDNN's AMX convolutions pick), a token sequence is
 * [n, 1, tokens, c]. So a 1x1 convolution, a linear layer and a layer norm
 * all see the same rows of c values, and no transposes happen between ops.
 * Activations use the Ops' compute dtype (fp32 or bf16); weights are
 * converted and reordered into the layout each primitive wants once, at load.
 * Primitives are created once per shape and cached in the Ops.
 */
#pragma once

#include "lcm.h"
#include "weights.h"
#include <oneapi/dnnl/dnnl.h>

typedef struct Ops Ops;

Ops *ops_new(LcmPrecision precision, GError **error);
void ops_free(Ops *ops);
/* Frees what loading layers needed and running them does not; call once a
 * network has loaded (loading more layers later still works). */
void ops_load_done(Ops *ops);
LcmPrecision ops_precision(const Ops *ops); /* FP32 or BF16, never AUTO */

/* Layers loaded from `w` from now on come from, and go to, the on-disk
 * weight cache entry of `network` (e.g. "unet"; see docs/architecture.md,
 * "Weight cache") unless the cache is off. Call before loading layers. */
void ops_use_weight_cache(Ops *ops, const char *network, const Weights *w);
/* Writes the network's cache entry if its layers gained layouts since it was
 * read or written: call after a successful forward pass (cheap otherwise). */
void ops_weight_cache_store(Ops *ops);
/* Whether the layers could come from a cache entry read at load. */
gboolean ops_weight_cache_was_read(const Ops *ops);
dnnl_data_type_t ops_dtype(const Ops *ops);

/* ---- Tensors --------------------------------------------------------------- */

typedef struct {
  int n, h, w, c;
  dnnl_data_type_t dtype; /* dnnl_f32 or dnnl_bf16 */
  void *data;             /* 64-byte aligned; owned by the tensor */
} Tensor;

Tensor *tensor_new(int n, int h, int w, int c, dnnl_data_type_t dtype);
void tensor_free(Tensor *t);
size_t tensor_numel(const Tensor *t);
/* fp32 NCHW host data <-> a tensor in the Ops' dtype. */
Tensor *tensor_from_nchw(const Ops *ops, const float *src, int n, int c, int h, int w);
void tensor_to_nchw(const Tensor *t, float *dst);
/* fp32 row-major [n, tokens, c] <-> a sequence tensor. */
Tensor *tensor_from_rows(const Ops *ops, const float *src, int n, int tokens, int c);
void tensor_to_rows(const Tensor *t, float *dst);

/* ---- Layers with weights --------------------------------------------------- */

typedef enum {
  ACT_NONE,
  ACT_SILU,
  ACT_RELU,
  ACT_GELU_ERF,   /* exact gelu */
  ACT_QUICK_GELU, /* x * sigmoid(1.702 x) */
} Activation;

typedef struct Conv2d Conv2d;
typedef struct Linear Linear;
typedef struct Norm Norm; /* group norm or layer norm: scale + shift */

/* Each loader reads PREFIX.weight (and PREFIX.bias when has_bias) from the
 * weights, checks shapes and prepares the weights for oneDNN. */
Conv2d *conv2d_load(Ops *ops, const Weights *w, const char *prefix, int in_ch, int out_ch,
                    int kernel, int stride, gboolean has_bias, GError **error);
/* Padding: `pad` on every side, or asymmetric (VAE encoder downsampling pads
 * right/bottom only): top, left, bottom, right. */
void conv2d_set_padding(Conv2d *conv, int top, int left, int bottom, int right);
void conv2d_free(Conv2d *conv);
/* The same from fp32 host arrays: weight [out_ch, in_ch, kernel, kernel],
 * bias [out_ch] or NULL (tests, merged weights). */
Conv2d *conv2d_new(Ops *ops, const float *weight, const float *bias, int in_ch, int out_ch,
                   int kernel, int stride, GError **error);

/* Nearest x2 upsampling followed by a 3x3 convolution (stride 1, padding 1)
 * as one layer: PREFIX.weight (and PREFIX.bias) are folded at load into
 * four 2x2 convolutions on the low-resolution input (2.25x fewer FLOPs, no
 * upsampled tensor). With any_size the 3x3 weights are kept too, for
 * targets other than exactly x2 (the UNet's odd skip sizes). */
typedef struct UpsampleConv UpsampleConv;
UpsampleConv *upsample_conv_load(Ops *ops, const Weights *w, const char *prefix, int in_ch,
                                 int out_ch, gboolean has_bias, gboolean any_size, GError **error);
/* From fp32 host arrays: weight [out_ch, in_ch, 3, 3], bias [out_ch] or NULL. */
UpsampleConv *upsample_conv_new(Ops *ops, const float *weight, const float *bias, int in_ch,
                                int out_ch, gboolean any_size, GError **error);
void upsample_conv_free(UpsampleConv *uc);

Linear *linear_load(Ops *ops, const Weights *w, const char *prefix, int in_features,
                    int out_features, gboolean has_bias, GError **error);
/* n_parts layers of out_each outputs from consecutive row blocks of one
 * PREFIX.weight / PREFIX.bias (GEGLU's two halves), the file read once. */
gboolean linear_load_split(Ops *ops, const Weights *w, const char *prefix, int in_features,
                           int n_parts, int out_each, gboolean has_bias, Linear **parts,
                           GError **error);
/* One layer computing several same-shaped layers side by side: outputs are
 * the concatenation, in order, of PREFIXES[i] (fused q/k/v projections). */
Linear *linear_load_fused(Ops *ops, const Weights *w, const char *const *prefixes, int n_parts,
                          int in_features, int out_each, gboolean has_bias, GError **error);
/* From fp32 host arrays: weight [out_features, in_features], bias or NULL. */
Linear *linear_new(Ops *ops, const float *weight, const float *bias, int in_features,
                   int out_features, GError **error);
void linear_free(Linear *linear);

/* A lookup table PREFIX.weight [rows, width] (CLIP's token embedding) in
 * the compute dtype, through the weight cache: a cached table is mapped, and
 * only the rows looked up are ever read. */
typedef struct Embedding Embedding;
Embedding *embedding_load(Ops *ops, const Weights *w, const char *prefix, int rows, int width,
                          GError **error);
/* Row `row` (0 <= row < rows, the caller checks) as fp32 into dst[width]. */
void embedding_row(const Embedding *emb, int row, float *dst);
void embedding_free(Embedding *emb);

Norm *norm_load(Ops *ops, const Weights *w, const char *prefix, int channels, GError **error);
/* From fp32 host arrays of `channels` values. */
Norm *norm_new(Ops *ops, const float *scale, const float *shift, int channels, GError **error);
void norm_free(Norm *norm);

/* ---- Operations ------------------------------------------------------------ *
 * Each returns a new tensor (NULL + error on failure) and leaves inputs as
 * they are. The epilogue is out = act(op(x) + bias + residual), fused into
 * the primitive. residual may be NULL, have the output's shape, or be
 * [n,1,1,c]: a per-channel vector added everywhere (the resnet's time
 * embedding, as a broadcast binary post-op).                                 */

Tensor *conv2d(Ops *ops, const Conv2d *conv, const Tensor *x, const Tensor *residual,
               Activation act, GError **error);
/* conv3x3(upsample_nearest(x, out_h, out_w)) (+ bias). */
Tensor *upsample_conv(Ops *ops, const UpsampleConv *uc, const Tensor *x, int out_h, int out_w,
                      GError **error);
/* Rows of x (n*h*w of them, c = in_features) times W^T. */
Tensor *linear(Ops *ops, const Linear *lin, const Tensor *x, const Tensor *residual, Activation act,
               GError **error);
/* GEGLU feed-forward input: a * gelu(b) with a = x W_a^T + b_a, b = x W_b^T + b_b. */
Tensor *linear_geglu(Ops *ops, const Linear *a, const Linear *b, const Tensor *x, GError **error);
Tensor *group_norm(Ops *ops, const Norm *norm, const Tensor *x, int groups, float eps,
                   Activation act /* NONE or SILU */, GError **error);
Tensor *layer_norm(Ops *ops, const Norm *norm, const Tensor *x, float eps, GError **error);

/* Multi-head scaled dot-product attention on channels-last sequences:
 * q [n,1,tq,heads*d], k and v [n,1,tk,heads*d] -> [n,1,tq,heads*d].
 * Scale 1/sqrt(d); causal masks key j > query i (CLIP). */
Tensor *attention(Ops *ops, const Tensor *q, const Tensor *k, const Tensor *v, int heads,
                  gboolean causal, GError **error);
/* Self-attention on the output of a fused q/k/v linear: qkv [n,1,t,3*C]
 * holds q, k and v side by side in each row. */
Tensor *attention_fused_qkv(Ops *ops, const Tensor *qkv, int heads, gboolean causal,
                            GError **error);
/* Query-block size of the chunked attention (0 = the built-in choice); tests
 * set it small to split even tiny cases into several chunks. */
void ops_set_attention_chunk(Ops *ops, int rows);
/* A flag the networks check between their blocks (ops_check_cancel); NULL
 * for none. */
void ops_set_cancel(Ops *ops, volatile gint *cancel);
/* FALSE with LCM_ERROR_CANCELLED once the cancel flag is non-zero. */
gboolean ops_check_cancel(const Ops *ops, GError **error);

/* ---- Data movement --------------------------------------------------------- */

Tensor *concat_channels(Ops *ops, const Tensor *a, const Tensor *b, GError **error);
/* Nearest-neighbour resize (x2 upsampling, or to a skip tensor's size). */
Tensor *upsample_nearest(Ops *ops, const Tensor *x, int out_h, int out_w, GError **error);
/* x + y (same shape), and x * s + b elementwise. */
Tensor *tensor_add(Ops *ops, const Tensor *x, const Tensor *y, GError **error);
Tensor *tensor_affine(Ops *ops, const Tensor *x, float s, float b, GError **error);
/* A view of rows as a sequence and back: same data, new shape (no copy). */
void tensor_reshape(Tensor *t, int n, int h, int w, int c);
