/* The Ops context, the primitive cache, tensors and data movement. */
#include "ops-internal.h"
#include "weight-cache.h"

#include <math.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stdlib.h>
#include <sys/mman.h>

/* ---- Backend helpers ------------------------------------------------------- */

gboolean ops_backend_error(dnnl_status_t status, const char *what, GError **error) {
  g_set_error(error, LCM_ERROR, LCM_ERROR_BACKEND, "oneDNN failed on %s: %s", what,
              dnnl_status2str(status));
  return FALSE;
}

dnnl_memory_desc_t ops_md(int ndims, const dnnl_dim_t *dims, dnnl_data_type_t dtype,
                          dnnl_format_tag_t tag) {
  dnnl_dims_t full = {0}; /* the API reads a whole dnnl_dims_t */
  memcpy(full, dims, ndims * sizeof(dnnl_dim_t));
  dnnl_memory_desc_t md = NULL;
  dnnl_memory_desc_create_with_tag(&md, ndims, full, dtype, tag);
  return md;
}

dnnl_memory_desc_t ops_md_strided(int ndims, const dnnl_dim_t *dims, dnnl_data_type_t dtype,
                                  const dnnl_dim_t *strides) {
  dnnl_dims_t full_dims = {0}, full_strides = {0};
  memcpy(full_dims, dims, ndims * sizeof(dnnl_dim_t));
  memcpy(full_strides, strides, ndims * sizeof(dnnl_dim_t));
  dnnl_memory_desc_t md = NULL;
  dnnl_memory_desc_create_with_strides(&md, ndims, full_dims, dtype, full_strides);
  return md;
}

dnnl_memory_desc_t ops_md_nhwc(int n, int c, int h, int w, dnnl_data_type_t dtype) {
  const dnnl_dim_t dims[4] = {n, c, h, w};
  return ops_md(4, dims, dtype, dnnl_nhwc);
}

dnnl_primitive_attr_t ops_attr_new(dnnl_post_ops_t post_ops) {
  dnnl_primitive_attr_t attr = NULL;
  dnnl_primitive_attr_create(&attr);
  dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
  if (post_ops) dnnl_primitive_attr_set_post_ops(attr, post_ops);
  return attr;
}

void ops_post_ops_append_act(dnnl_post_ops_t post_ops, Activation act) {
  switch (act) {
  case ACT_NONE:
    break;
  case ACT_SILU:
    dnnl_post_ops_append_eltwise(post_ops, dnnl_eltwise_swish, 1.0f, 0.0f);
    break;
  case ACT_RELU:
    dnnl_post_ops_append_eltwise(post_ops, dnnl_eltwise_relu, 0.0f, 0.0f);
    break;
  case ACT_GELU_ERF:
    dnnl_post_ops_append_eltwise(post_ops, dnnl_eltwise_gelu_erf, 0.0f, 0.0f);
    break;
  case ACT_QUICK_GELU:
    dnnl_post_ops_append_eltwise(post_ops, dnnl_eltwise_swish, 1.702f, 0.0f);
    break;
  }
}

/* ---- Ops ------------------------------------------------------------------- */

static void primitive_free(gpointer data) {
  Primitive *p = data;
  dnnl_primitive_destroy(p->primitive);
  dnnl_primitive_desc_destroy(p->pd);
  g_free(p);
}

/* bf16 needs native support (AVX512-BF16/AMX, or emulation on AVX-512);
 * elsewhere oneDNN has no bf16 convolution at all. */
static gboolean bf16_supported(dnnl_engine_t engine) {
  dnnl_memory_desc_t act = ops_md_nhwc(1, 16, 8, 8, dnnl_bf16);
  const dnnl_dim_t wdims[4] = {16, 16, 3, 3};
  dnnl_memory_desc_t weights = ops_md(4, wdims, dnnl_bf16, dnnl_format_tag_any);
  const dnnl_dims_t strides = {1, 1}, dilates = {0, 0}, pad = {1, 1};
  dnnl_primitive_desc_t pd = NULL;
  dnnl_status_t status = dnnl_convolution_forward_primitive_desc_create(
      &pd, engine, dnnl_forward_inference, dnnl_convolution_direct, act, weights, NULL, act,
      strides, dilates, pad, pad, NULL);
  if (pd) dnnl_primitive_desc_destroy(pd);
  dnnl_memory_desc_destroy(act);
  dnnl_memory_desc_destroy(weights);
  return status == dnnl_success;
}

Ops *ops_new(LcmPrecision precision, GError **error) {
  Ops *ops = g_new0(Ops, 1);
  ops->precision = lcm_precision_resolve(precision);
  ops->dtype = ops->precision == LCM_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
  dnnl_status_t status = dnnl_engine_create(&ops->engine, dnnl_cpu, 0);
  if (status == dnnl_success)
    status = dnnl_stream_create(&ops->stream, ops->engine, dnnl_stream_default_flags);
  if (status != dnnl_success) {
    ops_backend_error(status, "creating the CPU engine", error);
    ops_free(ops);
    return NULL;
  }
  if (ops->dtype == dnnl_bf16 && !bf16_supported(ops->engine)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "this CPU cannot compute in bf16 (it needs AVX-512 or AMX); use fp32");
    ops_free(ops);
    return NULL;
  }
  ops->primitives = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, primitive_free);
  return ops;
}

void ops_use_weight_cache(Ops *ops, const char *network, const Weights *w) {
  weight_cache_free(ops->weight_cache);
  ops->weight_cache = weight_cache_open(network, ops->dtype, w);
}

void ops_weight_cache_store(Ops *ops) {
  weight_cache_store(ops->weight_cache);
}

gboolean ops_weight_cache_was_read(const Ops *ops) {
  return weight_cache_was_read(ops->weight_cache);
}

void ops_free(Ops *ops) {
  if (!ops) return;
  weight_cache_free(ops->weight_cache); /* the layers are freed: only the mapping is left */
  if (ops->primitives) g_hash_table_destroy(ops->primitives);
  free(ops->scratchpad);
  ops_load_done(ops);
  if (ops->stream) dnnl_stream_destroy(ops->stream);
  if (ops->engine) dnnl_engine_destroy(ops->engine);
  g_free(ops);
}

LcmPrecision ops_precision(const Ops *ops) {
  return ops->precision;
}

dnnl_data_type_t ops_dtype(const Ops *ops) {
  return ops->dtype;
}

void ops_set_cancel(Ops *ops, volatile gint *cancel) {
  ops->cancel = cancel;
}

gboolean ops_check_cancel(const Ops *ops, GError **error) {
  if (!ops->cancel || !g_atomic_int_get(ops->cancel)) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_CANCELLED, "cancelled");
  return FALSE;
}

void ops_set_attention_chunk(Ops *ops, int rows) {
  ops->attention_chunk = MAX(rows, 0);
}

const Primitive *ops_primitive_lookup(Ops *ops, const char *key) {
  return g_hash_table_lookup(ops->primitives, key);
}

const Primitive *ops_primitive_add(Ops *ops, const char *key, dnnl_status_t status,
                                   dnnl_primitive_desc_t pd, const char *what, GError **error) {
  dnnl_primitive_t primitive = NULL;
  if (status == dnnl_success) status = dnnl_primitive_create(&primitive, pd);
  if (status != dnnl_success) {
    if (pd) dnnl_primitive_desc_destroy(pd);
    ops_backend_error(status, what, error);
    return NULL;
  }
  Primitive *p = g_new(Primitive, 1);
  p->pd = pd;
  p->primitive = primitive;
  g_hash_table_insert(ops->primitives, g_strdup(key), p);
  return p;
}

/* Buffers from this size on are placed on 2 MB boundaries and marked for
 * transparent huge pages: a full-size model's weights and a 512² image's
 * activations are gigabytes, and faulting them in 4 kB at a time costs more
 * than filling them. */
#define HUGE_PAGE_SIZE ((size_t)2 << 20)
#define HUGE_BUFFER_MIN (4 * HUGE_PAGE_SIZE)

void *aligned_buffer(size_t bytes) {
  if (bytes < HUGE_BUFFER_MIN) return aligned_alloc(64, (MAX(bytes, 1) + 63) & ~(size_t)63);
  size_t rounded = (bytes + HUGE_PAGE_SIZE - 1) & ~(HUGE_PAGE_SIZE - 1);
  void *buffer = aligned_alloc(HUGE_PAGE_SIZE, rounded);
#ifdef MADV_HUGEPAGE
  if (buffer) madvise(buffer, rounded, MADV_HUGEPAGE); /* a hint: failure changes nothing */
#endif
  return buffer;
}

gboolean ops_execute(Ops *ops, const Primitive *p, const OpsArg *args, int n_args, GError **error) {
  dnnl_exec_arg_t exec[16];
  if (n_args >= (int)G_N_ELEMENTS(exec)) /* room for the scratchpad too */
    return ops_backend_error(dnnl_invalid_arguments, "a primitive with too many arguments", error);
  int n_exec = 0;
  gboolean ok = TRUE;
  dnnl_status_t status = dnnl_success;
  for (int i = 0; i < n_args && status == dnnl_success; i++) {
    const_dnnl_memory_desc_t md =
        dnnl_primitive_desc_query_md(p->pd, dnnl_query_exec_arg_md, args[i].arg);
    exec[n_exec].arg = args[i].arg;
    status = dnnl_memory_create(&exec[n_exec].memory, md, ops->engine, (void *)args[i].data);
    if (status == dnnl_success) n_exec++;
  }
  const_dnnl_memory_desc_t scratch_md =
      dnnl_primitive_desc_query_md(p->pd, dnnl_query_scratchpad_md, 0);
  size_t scratch_size = scratch_md ? dnnl_memory_desc_get_size(scratch_md) : 0;
  if (status == dnnl_success && scratch_size > 0) {
    if (scratch_size > ops->scratchpad_size) {
      free(ops->scratchpad);
      ops->scratchpad = aligned_buffer(scratch_size);
      ops->scratchpad_size = ops->scratchpad ? scratch_size : 0;
    }
    if (!ops->scratchpad) status = dnnl_out_of_memory;
    exec[n_exec].arg = DNNL_ARG_SCRATCHPAD;
    if (status == dnnl_success)
      status = dnnl_memory_create(&exec[n_exec].memory, scratch_md, ops->engine, ops->scratchpad);
    if (status == dnnl_success) n_exec++;
  }
  if (status == dnnl_success)
    status = dnnl_primitive_execute(p->primitive, ops->stream, n_exec, exec);
  if (status == dnnl_success) status = dnnl_stream_wait(ops->stream);
  for (int i = 0; i < n_exec; i++) dnnl_memory_destroy(exec[i].memory);
  if (status != dnnl_success) {
    const char *impl = NULL;
    dnnl_primitive_desc_query(p->pd, dnnl_query_impl_info_str, 0, &impl);
    ok = ops_backend_error(status, impl ? impl : "a primitive", error);
  }
  return ok;
}

/* ---- Tensors --------------------------------------------------------------- */

size_t dtype_size(dnnl_data_type_t dtype) {
  return dtype == dnnl_bf16 ? 2 : 4;
}

Tensor *tensor_new(int n, int h, int w, int c, dnnl_data_type_t dtype) {
  if (n <= 0 || h <= 0 || w <= 0 || c <= 0) return NULL;
  Tensor *t = g_new(Tensor, 1);
  *t = (Tensor){.n = n, .h = h, .w = w, .c = c, .dtype = dtype};
  t->data = aligned_buffer(tensor_numel(t) * dtype_size(dtype));
  if (!t->data) {
    g_free(t);
    return NULL;
  }
  return t;
}

Tensor *tensor_try_new(int n, int h, int w, int c, dnnl_data_type_t dtype, GError **error) {
  Tensor *t = tensor_new(n, h, w, c, dtype);
  if (!t)
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                "cannot allocate a %dx%dx%dx%d tensor (out of memory or bad size)", n, h, w, c);
  return t;
}

void tensor_free(Tensor *t) {
  if (!t) return;
  free(t->data);
  g_free(t);
}

size_t tensor_numel(const Tensor *t) {
  return (size_t)t->n * t->h * t->w * t->c;
}

void tensor_reshape(Tensor *t, int n, int h, int w, int c) {
  g_return_if_fail((size_t)n * h * w * c == tensor_numel(t));
  t->n = n;
  t->h = h;
  t->w = w;
  t->c = c;
}

gboolean ops_check_tensor(const Ops *ops, const Tensor *t, const char *op, const char *what,
                          int channels, GError **error) {
  if (!t) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "%s: %s is missing", op, what);
    return FALSE;
  }
  if (t->dtype != ops->dtype) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "%s: %s is %s, the ops compute in %s", op,
                what, t->dtype == dnnl_bf16 ? "bf16" : "fp32", lcm_precision_name(ops->precision));
    return FALSE;
  }
  if (channels > 0 && t->c != channels) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE, "%s: %s has %d channels, expected %d", op, what,
                t->c, channels);
    return FALSE;
  }
  return TRUE;
}

Tensor *tensor_from_nchw(const Ops *ops, const float *src, int n, int c, int h, int w) {
  Tensor *t = tensor_new(n, h, w, c, ops->dtype);
  if (!t) return NULL;
  const size_t hw = (size_t)h * w;
#pragma omp parallel for
  for (int b = 0; b < n; b++)
    for (size_t p = 0; p < hw; p++)
      for (int ch = 0; ch < c; ch++)
        element_set(t->data, t->dtype, ((size_t)b * hw + p) * c + ch,
                    src[((size_t)b * c + ch) * hw + p]);
  return t;
}

void tensor_to_nchw(const Tensor *t, float *dst) {
  const size_t hw = (size_t)t->h * t->w;
#pragma omp parallel for
  for (int b = 0; b < t->n; b++)
    for (int ch = 0; ch < t->c; ch++)
      for (size_t p = 0; p < hw; p++)
        dst[((size_t)b * t->c + ch) * hw + p] =
            element_get(t->data, t->dtype, ((size_t)b * hw + p) * t->c + ch);
}

Tensor *tensor_from_rows(const Ops *ops, const float *src, int n, int tokens, int c) {
  Tensor *t = tensor_new(n, 1, tokens, c, ops->dtype);
  if (!t) return NULL;
  const size_t count = tensor_numel(t);
  if (t->dtype == dnnl_f32) {
    memcpy(t->data, src, count * sizeof(float));
  } else {
#pragma omp parallel for
    for (size_t i = 0; i < count; i++) element_set(t->data, t->dtype, i, src[i]);
  }
  return t;
}

void tensor_to_rows(const Tensor *t, float *dst) {
  const size_t count = tensor_numel(t);
  if (t->dtype == dnnl_f32) {
    memcpy(dst, t->data, count * sizeof(float));
  } else {
#pragma omp parallel for
    for (size_t i = 0; i < count; i++) dst[i] = element_get(t->data, t->dtype, i);
  }
}

/* ---- Data movement --------------------------------------------------------- */

Tensor *concat_channels(Ops *ops, const Tensor *a, const Tensor *b, GError **error) {
  if (!ops_check_tensor(ops, a, "concat_channels", "first input", 0, error) ||
      !ops_check_tensor(ops, b, "concat_channels", "second input", 0, error))
    return NULL;
  if (a->n != b->n || a->h != b->h || a->w != b->w) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "concat_channels: inputs are %dx%dx%d and %dx%dx%d (n x h x w), which differ", a->n,
                a->h, a->w, b->n, b->h, b->w);
    return NULL;
  }
  Tensor *out = tensor_try_new(a->n, a->h, a->w, a->c + b->c, ops->dtype, error);
  if (!out) return NULL;
  const size_t elt = dtype_size(ops->dtype);
  const size_t pixels = (size_t)a->n * a->h * a->w;
  const size_t a_row = a->c * elt, b_row = b->c * elt, out_row = out->c * elt;
#pragma omp parallel for
  for (size_t p = 0; p < pixels; p++) {
    char *dst = (char *)out->data + p * out_row;
    memcpy(dst, (const char *)a->data + p * a_row, a_row);
    memcpy(dst + a_row, (const char *)b->data + p * b_row, b_row);
  }
  return out;
}

/* torch's nearest source index: floor(dst * (in / out)) in float, clamped. */
static int nearest_source(int dst, int in, int out) {
  const float scale = (float)in / (float)out;
  return MIN((int)floorf((float)dst * scale), in - 1);
}

Tensor *upsample_nearest(Ops *ops, const Tensor *x, int out_h, int out_w, GError **error) {
  if (!ops_check_tensor(ops, x, "upsample_nearest", "input", 0, error)) return NULL;
  Tensor *out = tensor_try_new(x->n, out_h, out_w, x->c, ops->dtype, error);
  if (!out) return NULL;
  const size_t row = x->c * dtype_size(ops->dtype);
#pragma omp parallel for collapse(2)
  for (int b = 0; b < x->n; b++)
    for (int oy = 0; oy < out_h; oy++) {
      const int iy = nearest_source(oy, x->h, out_h);
      for (int ox = 0; ox < out_w; ox++) {
        const int ix = nearest_source(ox, x->w, out_w);
        memcpy((char *)out->data + (((size_t)b * out_h + oy) * out_w + ox) * row,
               (const char *)x->data + (((size_t)b * x->h + iy) * x->w + ix) * row, row);
      }
    }
  return out;
}

Tensor *tensor_add(Ops *ops, const Tensor *x, const Tensor *y, GError **error) {
  if (!ops_check_tensor(ops, x, "tensor_add", "first input", 0, error) ||
      !ops_check_tensor(ops, y, "tensor_add", "second input", x->c, error))
    return NULL;
  if (x->n != y->n || x->h != y->h || x->w != y->w) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "tensor_add: shapes %dx%dx%dx%d and %dx%dx%dx%d differ", x->n, x->h, x->w, x->c,
                y->n, y->h, y->w, y->c);
    return NULL;
  }
  Tensor *out = tensor_try_new(x->n, x->h, x->w, x->c, ops->dtype, error);
  if (!out) return NULL;
  const size_t count = tensor_numel(x);
#pragma omp parallel for
  for (size_t i = 0; i < count; i++)
    element_set(out->data, out->dtype, i,
                element_get(x->data, x->dtype, i) + element_get(y->data, y->dtype, i));
  return out;
}

Tensor *tensor_affine(Ops *ops, const Tensor *x, float s, float b, GError **error) {
  if (!ops_check_tensor(ops, x, "tensor_affine", "input", 0, error)) return NULL;
  Tensor *out = tensor_try_new(x->n, x->h, x->w, x->c, ops->dtype, error);
  if (!out) return NULL;
  const size_t count = tensor_numel(x);
#pragma omp parallel for
  for (size_t i = 0; i < count; i++)
    element_set(out->data, out->dtype, i, element_get(x->data, x->dtype, i) * s + b);
  return out;
}
