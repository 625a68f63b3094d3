/* Layers with weights: convolution, linear (matmul), group and layer norm,
 * with their epilogues fused as oneDNN post-ops. */
#include "ops-internal.h"
#include "weight-cache.h"

#include <math.h>
#include <stdlib.h>

/* Representative activation size used to pick a weights layout at load:
 * oneDNN picks the same layout for most power-of-two sizes. */
#define REPRESENTATIVE_SIDE 64
#define REPRESENTATIVE_ROWS 1024

/* ---- Packed weights -------------------------------------------------------- */

static gboolean reorder_into(Ops *ops, const_dnnl_memory_desc_t src_md, const void *src,
                             const_dnnl_memory_desc_t dst_md, void **dst, GError **error) {
  *dst = aligned_buffer(dnnl_memory_desc_get_size(dst_md));
  dnnl_primitive_desc_t pd = NULL;
  dnnl_primitive_t reorder = NULL;
  dnnl_memory_t src_mem = NULL, dst_mem = NULL;
  dnnl_status_t status = *dst ? dnnl_success : dnnl_out_of_memory;
  if (status == dnnl_success)
    status =
        dnnl_reorder_primitive_desc_create(&pd, src_md, ops->engine, dst_md, ops->engine, NULL);
  if (status == dnnl_success) status = dnnl_primitive_create(&reorder, pd);
  if (status == dnnl_success)
    status = dnnl_memory_create(&src_mem, src_md, ops->engine, (void *)src);
  if (status == dnnl_success) status = dnnl_memory_create(&dst_mem, dst_md, ops->engine, *dst);
  if (status == dnnl_success) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src_mem}, {DNNL_ARG_TO, dst_mem}};
    status = dnnl_primitive_execute(reorder, ops->stream, 2, args);
  }
  if (status == dnnl_success) status = dnnl_stream_wait(ops->stream);
  dnnl_memory_destroy(src_mem);
  dnnl_memory_destroy(dst_mem);
  dnnl_primitive_destroy(reorder);
  dnnl_primitive_desc_destroy(pd);
  if (status != dnnl_success) {
    free(*dst);
    *dst = NULL;
    return ops_backend_error(status, "reordering weights", error);
  }
  return TRUE;
}

static gboolean packed_weights_append(Ops *ops, PackedWeights *pw, const_dnnl_memory_desc_t src_md,
                                      const void *src, const_dnnl_memory_desc_t packed_md,
                                      GError **error) {
  WeightLayout layout = {NULL, NULL, FALSE, FALSE};
  if (!reorder_into(ops, src_md, src, packed_md, &layout.data, error)) return FALSE;
  dnnl_memory_desc_clone(&layout.md, packed_md);
  pw->layouts = g_renew(WeightLayout, pw->layouts, pw->n_layouts + 1);
  pw->layouts[pw->n_layouts++] = layout;
  if (pw->cache) weight_cache_changed(pw->cache);
  return TRUE;
}

gboolean packed_weights_init(Ops *ops, PackedWeights *pw, const_dnnl_memory_desc_t plain_md,
                             const float *plain, const_dnnl_memory_desc_t packed_md,
                             GError **error) {
  *pw = (PackedWeights){0};
  return packed_weights_append(ops, pw, plain_md, plain, packed_md, error);
}

static void weight_layout_clear(WeightLayout *layout) {
  dnnl_memory_desc_destroy(layout->md);
  if (!layout->mapped) free(layout->data);
}

/* The plain (row-major) layout of a weights descriptor's dims and type. */
static dnnl_memory_desc_t plain_like(const_dnnl_memory_desc_t md) {
  static const dnnl_format_tag_t plain_tags[] = {dnnl_a, dnnl_ab, dnnl_abc, dnnl_abcd, dnnl_abcde};
  int ndims = 0;
  const dnnl_dims_t *dims = NULL;
  dnnl_data_type_t dtype = dnnl_f32;
  dnnl_memory_desc_query(md, dnnl_query_ndims_s32, &ndims);
  dnnl_memory_desc_query(md, dnnl_query_dims, &dims);
  dnnl_memory_desc_query(md, dnnl_query_data_type, &dtype);
  dnnl_memory_desc_t plain = NULL;
  dnnl_memory_desc_create_with_tag(&plain, ndims, *dims, dtype, plain_tags[ndims - 1]);
  return plain;
}

const void *packed_weights_for(Ops *ops, PackedWeights *pw, const Primitive *p, GError **error) {
  const_dnnl_memory_desc_t wanted =
      dnnl_primitive_desc_query_md(p->pd, dnnl_query_exec_arg_md, DNNL_ARG_WEIGHTS);
  for (int i = 0; i < pw->n_layouts; i++)
    if (dnnl_memory_desc_equal(pw->layouts[i].md, wanted)) {
      pw->layouts[i].used = TRUE;
      return pw->layouts[i].data;
    }
  /* Through the plain layout: oneDNN has fast (JIT) reorders between plain
   * and blocked layouts, but only a slow generic one between two blocked
   * layouts (about 50x slower: seconds for a UNet). */
  dnnl_memory_desc_t plain_md = plain_like(pw->layouts[0].md);
  void *plain = NULL;
  gboolean ok =
      reorder_into(ops, pw->layouts[0].md, pw->layouts[0].data, plain_md, &plain, error) &&
      packed_weights_append(ops, pw, plain_md, plain, wanted, error);
  free(plain);
  dnnl_memory_desc_destroy(plain_md);
  if (!ok) return NULL;
  WeightLayout *added = &pw->layouts[pw->n_layouts - 1];
  added->used = TRUE;
  if (!pw->layouts[0].used) { /* the load-time guess was wrong: forget it */
    weight_layout_clear(&pw->layouts[0]);
    pw->layouts[0] = *added;
    pw->n_layouts--;
    return pw->layouts[0].data;
  }
  return added->data;
}

void packed_weights_clear(PackedWeights *pw) {
  if (pw->cache) weight_cache_wait(pw->cache); /* it may be writing these layouts */
  for (int i = 0; i < pw->n_layouts; i++) weight_layout_clear(&pw->layouts[i]);
  g_free(pw->layouts);
  if (pw->cache) weight_cache_unregister(pw->cache, pw->cache_name);
  g_free(pw->cache_name);
  *pw = (PackedWeights){0};
}

/* The weights md a primitive chose, for packing at load time. */
static dnnl_memory_desc_t chosen_weights_md(dnnl_primitive_desc_t pd) {
  dnnl_memory_desc_t md = NULL;
  dnnl_memory_desc_clone(&md, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0));
  return md;
}

static float *copy_bias(const float *bias, int count) {
  if (!bias) return NULL;
  float *copy = aligned_buffer(count * sizeof(float));
  if (copy) memcpy(copy, bias, count * sizeof(float));
  return copy;
}

/* ---- Epilogues ------------------------------------------------------------- */

gboolean epilogue_add_is_broadcast(const Epilogue *ep) {
  return ep->add && ep->add->h == 1 && ep->add->w == 1;
}

gboolean epilogue_check(const Ops *ops, const Epilogue *ep, int n, int h, int w, int c,
                        const char *op, GError **error) {
  if (ep->add) {
    if (!ops_check_tensor(ops, ep->add, op, "residual", c, error)) return FALSE;
    if (ep->add->n != n ||
        !((ep->add->h == h && ep->add->w == w) || epilogue_add_is_broadcast(ep))) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                  "%s: residual is %dx%dx%dx%d, expected %dx%dx%dx%d or %dx1x1x%d", op, ep->add->n,
                  ep->add->h, ep->add->w, ep->add->c, n, h, w, c, n, c);
      return FALSE;
    }
  }
  if (ep->mul) {
    if (!ops_check_tensor(ops, ep->mul, op, "gate", c, error)) return FALSE;
    if (ep->mul->n != n || ep->mul->h != h || ep->mul->w != w) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                  "%s: gate is %dx%dx%dx%d, expected %dx%dx%dx%d", op, ep->mul->n, ep->mul->h,
                  ep->mul->w, ep->mul->c, n, h, w, c);
      return FALSE;
    }
  }
  return TRUE;
}

char *epilogue_key(const Epilogue *ep) {
  const char *add = !ep->add ? "none" : epilogue_add_is_broadcast(ep) ? "channel" : "full";
  return g_strdup_printf("add=%s act=%d mul=%d", add, (int)ep->act, ep->mul != NULL);
}

dnnl_post_ops_t epilogue_post_ops(const Epilogue *ep, const_dnnl_memory_desc_t full,
                                  const_dnnl_memory_desc_t broadcast) {
  if (!ep->add && ep->act == ACT_NONE && !ep->mul) return NULL;
  dnnl_post_ops_t post_ops = NULL;
  dnnl_post_ops_create(&post_ops);
  if (ep->add)
    dnnl_post_ops_append_binary(post_ops, dnnl_binary_add,
                                epilogue_add_is_broadcast(ep) ? broadcast : full);
  ops_post_ops_append_act(post_ops, ep->act);
  if (ep->mul) dnnl_post_ops_append_binary(post_ops, dnnl_binary_mul, full);
  return post_ops;
}

int epilogue_args(const Epilogue *ep, OpsArg *args, int n_args, size_t add_offset,
                  size_t mul_offset) {
  int index = 0;
  if (ep->add) {
    args[n_args++] =
        (OpsArg){DNNL_ARG_ATTR_MULTIPLE_POST_OP(index) | DNNL_ARG_SRC_1,
                 (const char *)ep->add->data + add_offset * dtype_size(ep->add->dtype)};
    index++;
  }
  if (ep->act != ACT_NONE) index++;
  if (ep->mul)
    args[n_args++] =
        (OpsArg){DNNL_ARG_ATTR_MULTIPLE_POST_OP(index) | DNNL_ARG_SRC_1,
                 (const char *)ep->mul->data + mul_offset * dtype_size(ep->mul->dtype)};
  return n_args;
}

/* ---- Loading helpers --------------------------------------------------------- */

void ops_load_done(Ops *ops) {
  free(ops->load_buffer);
  ops->load_buffer = NULL;
  ops->load_buffer_size = 0;
}

/* The Ops' load buffer, grown to hold `count` floats. */
static float *load_buffer(Ops *ops, size_t count, const char *prefix, GError **error) {
  if (count > ops->load_buffer_size) {
    ops_load_done(ops);
    if (!(ops->load_buffer = aligned_buffer(count * sizeof(float)))) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: out of memory loading its weights (%zu MB)",
                  prefix, count * sizeof(float) >> 20);
      return NULL;
    }
    ops->load_buffer_size = count;
  }
  return ops->load_buffer;
}

/* PREFIX.weight read into `dst` (which holds the shape). */
static gboolean read_weight(const Weights *w, const char *prefix, int ndims, const int64_t *shape,
                            float *dst, GError **error) {
  char *name = g_strdup_printf("%s.weight", prefix);
  gboolean ok = weights_read(w, name, ndims, shape, dst, error);
  g_free(name);
  return ok;
}

/* PREFIX.SUFFIX, a small vector (bias, norm scale): its own copy (g_free it). */
static float *load_vector(const Weights *w, const char *prefix, const char *suffix, int64_t count,
                          GError **error) {
  char *name = g_strdup_printf("%s.%s", prefix, suffix);
  float *data = weights_get(w, name, 1, &count, error);
  g_free(name);
  return data;
}

/* ---- Packed weights through the cache ------------------------------------------ */

const float *weight_source_data(Ops *ops, WeightSource *src, GError **error) {
  if (src->derived) return src->derived;
  if (!src->data) {
    const size_t each = weights_shape_numel(src->ndims, src->shape);
    float *dst = load_buffer(ops, each * src->n_prefixes, src->prefixes[0], error);
    for (int i = 0; dst && i < src->n_prefixes; i++)
      if (!read_weight(src->w, src->prefixes[i], src->ndims, src->shape, dst + i * each, error))
        dst = NULL;
    src->data = dst;
  }
  if (!src->data || !src->derive) return src->data;
  return src->derived = src->derive(src->data, src->derive_arg, error);
}

void weight_source_clear(WeightSource *src) {
  g_clear_pointer(&src->derived, g_free);
}

/* Layers packed from a file are named after it in the cache: the prefix,
 * "a+b" for fused prefixes, "prefix[i/n]" for one of n parts, ":variant"
 * for derived weights. */
static char *cache_name(const WeightSource *src, int part, int n_parts) {
  if (!src->w) return NULL;
  GString *name = g_string_new(src->prefixes[0]);
  for (int i = 1; i < src->n_prefixes; i++) g_string_append_printf(name, "+%s", src->prefixes[i]);
  if (n_parts > 1) g_string_append_printf(name, "[%d/%d]", part, n_parts);
  if (src->variant) g_string_append_printf(name, ":%s", src->variant);
  return g_string_free(name, FALSE);
}

/* The source's tensors checked as a read would, without reading them. */
static gboolean weight_source_check(const WeightSource *src, GError **error) {
  gboolean ok = TRUE;
  for (int i = 0; ok && i < src->n_prefixes; i++) {
    char *name = g_strdup_printf("%s.weight", src->prefixes[i]);
    ok = weights_check(src->w, name, src->ndims, src->shape, error);
    g_free(name);
  }
  return ok;
}

gboolean packed_weights_make(Ops *ops, PackedWeights *pw, WeightSource *src, int part, int n_parts,
                             const_dnnl_memory_desc_t plain_md, const_dnnl_memory_desc_t packed_md,
                             GError **error) {
  *pw = (PackedWeights){0};
  char *name = ops->weight_cache ? cache_name(src, part, n_parts) : NULL;
  gboolean ok;
  if (name && weight_cache_take(ops->weight_cache, name, packed_md, pw)) {
    ok = weight_source_check(src, error);
  } else {
    const float *data = weight_source_data(ops, src, error);
    const size_t part_size = dnnl_memory_desc_get_size(plain_md) / sizeof(float);
    ok = data &&
         packed_weights_init(ops, pw, plain_md, data + (size_t)part * part_size, packed_md, error);
    if (ok && name) weight_cache_changed(ops->weight_cache);
  }
  if (ok && name && weight_cache_register(ops->weight_cache, name, pw)) {
    pw->cache = ops->weight_cache;
    pw->cache_name = g_steal_pointer(&name);
  }
  g_free(name);
  return ok;
}

static gboolean check_positive(int value, const char *what, const char *layer, GError **error) {
  if (value > 0) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "%s: %s must be positive, got %d", layer, what,
              value);
  return FALSE;
}

/* ---- Convolution ------------------------------------------------------------- */

struct Conv2d {
  int in_ch, out_ch, kernel, stride;
  int pad_top, pad_left, pad_bottom, pad_right;
  PackedWeights weights;
  float *bias; /* fp32, NULL without bias */
};

static dnnl_status_t conv_pd_create(Ops *ops, const Conv2d *conv, int n, int h, int w,
                                    const Epilogue *ep, dnnl_primitive_desc_t *pd) {
  const int oh = (h + conv->pad_top + conv->pad_bottom - conv->kernel) / conv->stride + 1;
  const int ow = (w + conv->pad_left + conv->pad_right - conv->kernel) / conv->stride + 1;
  dnnl_memory_desc_t src = ops_md_nhwc(n, conv->in_ch, h, w, ops->dtype);
  dnnl_memory_desc_t dst = ops_md_nhwc(n, conv->out_ch, oh, ow, ops->dtype);
  dnnl_memory_desc_t channel = ops_md_nhwc(n, conv->out_ch, 1, 1, ops->dtype);
  const dnnl_dim_t wdims[4] = {conv->out_ch, conv->in_ch, conv->kernel, conv->kernel};
  dnnl_memory_desc_t weights = ops_md(4, wdims, ops->dtype, dnnl_format_tag_any);
  const dnnl_dim_t bdims[1] = {conv->out_ch};
  dnnl_memory_desc_t bias = conv->bias ? ops_md(1, bdims, dnnl_f32, dnnl_a) : NULL;
  const dnnl_dims_t strides = {conv->stride, conv->stride}, dilates = {0, 0};
  const dnnl_dims_t pad_l = {conv->pad_top, conv->pad_left};
  const dnnl_dims_t pad_r = {conv->pad_bottom, conv->pad_right};
  dnnl_post_ops_t post_ops = ep ? epilogue_post_ops(ep, dst, channel) : NULL;
  dnnl_primitive_attr_t attr = ops_attr_new(post_ops);
  dnnl_status_t status = dnnl_convolution_forward_primitive_desc_create(
      pd, ops->engine, dnnl_forward_inference, dnnl_convolution_direct, src, weights, bias, dst,
      strides, dilates, pad_l, pad_r, attr);
  dnnl_primitive_attr_destroy(attr);
  if (post_ops) dnnl_post_ops_destroy(post_ops);
  dnnl_memory_desc_destroy(src);
  dnnl_memory_desc_destroy(dst);
  dnnl_memory_desc_destroy(channel);
  dnnl_memory_desc_destroy(weights);
  if (bias) dnnl_memory_desc_destroy(bias);
  return status;
}

/* A convolution whose weights come from `src` (part `part` of n_parts). */
static Conv2d *conv2d_make(Ops *ops, WeightSource *src, int part, int n_parts, const float *bias,
                           int in_ch, int out_ch, int kernel, int stride, GError **error) {
  if (!check_positive(in_ch, "input channels", "conv2d", error) ||
      !check_positive(out_ch, "output channels", "conv2d", error) ||
      !check_positive(kernel, "kernel size", "conv2d", error) ||
      !check_positive(stride, "stride", "conv2d", error))
    return NULL;
  Conv2d *conv = g_new0(Conv2d, 1);
  *conv = (Conv2d){.in_ch = in_ch, .out_ch = out_ch, .kernel = kernel, .stride = stride};
  conv2d_set_padding(conv, kernel / 2, kernel / 2, kernel / 2, kernel / 2);
  conv->bias = copy_bias(bias, out_ch);
  dnnl_primitive_desc_t pd = NULL;
  dnnl_status_t status =
      conv_pd_create(ops, conv, 1, REPRESENTATIVE_SIDE, REPRESENTATIVE_SIDE, NULL, &pd);
  if (status != dnnl_success) {
    ops_backend_error(status, "creating a convolution", error);
    conv2d_free(conv);
    return NULL;
  }
  dnnl_memory_desc_t packed = chosen_weights_md(pd);
  dnnl_primitive_desc_destroy(pd);
  const dnnl_dim_t wdims[4] = {out_ch, in_ch, kernel, kernel};
  dnnl_memory_desc_t plain = ops_md(4, wdims, dnnl_f32, dnnl_oihw);
  gboolean ok = packed_weights_make(ops, &conv->weights, src, part, n_parts, plain, packed, error);
  dnnl_memory_desc_destroy(plain);
  dnnl_memory_desc_destroy(packed);
  if (!ok) {
    conv2d_free(conv);
    return NULL;
  }
  return conv;
}

Conv2d *conv2d_new(Ops *ops, const float *weight, const float *bias, int in_ch, int out_ch,
                   int kernel, int stride, GError **error) {
  WeightSource src = {.data = weight};
  return conv2d_make(ops, &src, 0, 1, bias, in_ch, out_ch, kernel, stride, error);
}

Conv2d *conv2d_load(Ops *ops, const Weights *w, const char *prefix, int in_ch, int out_ch,
                    int kernel, int stride, gboolean has_bias, GError **error) {
  const int64_t wshape[4] = {out_ch, in_ch, kernel, kernel};
  WeightSource src = {.w = w, .prefixes = &prefix, .n_prefixes = 1, .ndims = 4, .shape = wshape};
  /* The weight's errors come first (a wrong file shows there). */
  if (!weight_source_check(&src, error)) return NULL;
  float *bias = has_bias ? load_vector(w, prefix, "bias", out_ch, error) : NULL;
  Conv2d *conv = NULL;
  if (!has_bias || bias)
    conv = conv2d_make(ops, &src, 0, 1, bias, in_ch, out_ch, kernel, stride, error);
  g_free(bias);
  return conv;
}

void conv2d_set_padding(Conv2d *conv, int top, int left, int bottom, int right) {
  conv->pad_top = top;
  conv->pad_left = left;
  conv->pad_bottom = bottom;
  conv->pad_right = right;
}

void conv2d_free(Conv2d *conv) {
  if (!conv) return;
  packed_weights_clear(&conv->weights);
  free(conv->bias);
  g_free(conv);
}

Tensor *conv2d(Ops *ops, const Conv2d *conv, const Tensor *x, const Tensor *residual,
               Activation act, GError **error) {
  if (!ops_check_tensor(ops, x, "conv2d", "input", conv->in_ch, error)) return NULL;
  const int oh = (x->h + conv->pad_top + conv->pad_bottom - conv->kernel) / conv->stride + 1;
  const int ow = (x->w + conv->pad_left + conv->pad_right - conv->kernel) / conv->stride + 1;
  if (x->h + conv->pad_top + conv->pad_bottom < conv->kernel ||
      x->w + conv->pad_left + conv->pad_right < conv->kernel) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "conv2d: a %dx%d input is smaller than the %dx%d kernel", x->h, x->w, conv->kernel,
                conv->kernel);
    return NULL;
  }
  const Epilogue ep = {.add = residual, .act = act};
  if (!epilogue_check(ops, &ep, x->n, oh, ow, conv->out_ch, "conv2d", error)) return NULL;

  char *ep_key = epilogue_key(&ep);
  char *key = g_strdup_printf("conv %d>%d k%d s%d p%d,%d,%d,%d bias%d n%d %dx%d dt%d %s",
                              conv->in_ch, conv->out_ch, conv->kernel, conv->stride, conv->pad_top,
                              conv->pad_left, conv->pad_bottom, conv->pad_right, conv->bias != NULL,
                              x->n, x->h, x->w, (int)ops->dtype, ep_key);
  g_free(ep_key);
  const Primitive *p = ops_primitive_lookup(ops, key);
  if (!p) {
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t status = conv_pd_create(ops, conv, x->n, x->h, x->w, &ep, &pd);
    p = ops_primitive_add(ops, key, status, pd, "creating a convolution", error);
  }
  g_free(key);
  if (!p) return NULL;
  /* Packing a new layout changes only the weights cache, not the layer. */
  const void *weights = packed_weights_for(ops, (PackedWeights *)&conv->weights, p, error);
  if (!weights) return NULL;
  Tensor *out = tensor_try_new(x->n, oh, ow, conv->out_ch, ops->dtype, error);
  if (!out) return NULL;
  OpsArg args[8] = {
      {DNNL_ARG_SRC, x->data}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, out->data}};
  int n_args = 3;
  if (conv->bias) args[n_args++] = (OpsArg){DNNL_ARG_BIAS, conv->bias};
  n_args = epilogue_args(&ep, args, n_args, 0, 0);
  if (!ops_execute(ops, p, args, n_args, error)) {
    tensor_free(out);
    return NULL;
  }
  return out;
}

/* ---- Embedding tables ------------------------------------------------------------ */

struct Embedding {
  int rows, width;
  dnnl_data_type_t dtype;
  PackedWeights table; /* one plain [rows, width] layout */
};

Embedding *embedding_load(Ops *ops, const Weights *w, const char *prefix, int rows, int width,
                          GError **error) {
  if (!check_positive(rows, "rows", "embedding", error) ||
      !check_positive(width, "width", "embedding", error))
    return NULL;
  const int64_t shape[2] = {rows, width};
  WeightSource src = {.w = w, .prefixes = &prefix, .n_prefixes = 1, .ndims = 2, .shape = shape};
  if (!weight_source_check(&src, error)) return NULL;
  Embedding *emb = g_new0(Embedding, 1);
  *emb = (Embedding){.rows = rows, .width = width, .dtype = ops->dtype};
  const dnnl_dim_t dims[2] = {rows, width};
  dnnl_memory_desc_t plain = ops_md(2, dims, dnnl_f32, dnnl_ab);
  dnnl_memory_desc_t table = ops_md(2, dims, ops->dtype, dnnl_ab);
  const gboolean ok = packed_weights_make(ops, &emb->table, &src, 0, 1, plain, table, error);
  dnnl_memory_desc_destroy(plain);
  dnnl_memory_desc_destroy(table);
  if (!ok) g_clear_pointer(&emb, embedding_free);
  return emb;
}

void embedding_row(const Embedding *emb, int row, float *dst) {
  const void *table = emb->table.layouts[0].data;
  const size_t first = (size_t)row * emb->width;
  for (int j = 0; j < emb->width; j++) dst[j] = element_get(table, emb->dtype, first + j);
}

void embedding_free(Embedding *emb) {
  if (!emb) return;
  packed_weights_clear(&emb->table);
  g_free(emb);
}

/* ---- Nearest x2 upsampling + 3x3 convolution ----------------------------------- *
 * Output pixel (2i+a, 2j+b) of conv3x3(upsample2x(x)) (padding 1) reads the
 * low-resolution rows i-1+a..i+a and columns j-1+b..j+b: kernel row ky lands
 * on low-resolution tap r = (a+ky+1)/2 - a, so the 3 rows fold into 2, and
 * likewise the columns. One 2x2 convolution with 4 x out_ch outputs (phase
 * (a,b) in block 2a+b) and padding 1 on the low-resolution input computes all
 * four phases: output position (i+a, j+b) of block 2a+b is pixel (2i+a, 2j+b).
 * 16 instead of 36 multiply-adds per low-resolution pixel, and the 4x tensor
 * is never the input of a convolution. A pixel shuffle interleaves the phases
 * (oneDNN 3.7 runs a convolution into strided rows as ref:any, 10x slower). */

struct UpsampleConv {
  int out_ch;
  Conv2d *phases; /* 2x2, in_ch -> 4 x out_ch */
  Conv2d *direct; /* the 3x3 itself, for sizes other than x2; NULL if not kept */
};

typedef struct {
  int in_ch, out_ch;
} UpsampleDims;

/* Phase weights [2a+b][o][i][r][s]: the sums of the 3x3 taps of `weight`
 * ([o][i][3][3]) folding onto (r, s). */
static float *fold_phases(const float *weight, const void *arg, GError **error) {
  const UpsampleDims *d = arg;
  const size_t plane = (size_t)d->out_ch * d->in_ch;
  float *folded = g_try_new0(float, 16 * plane);
  if (!folded) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO,
                "upsample_conv: out of memory folding %d x %d weights", d->out_ch, d->in_ch);
    return NULL;
  }
#pragma omp parallel for schedule(static)
  for (size_t oi = 0; oi < plane; oi++)
    for (int a = 0; a < 2; a++)
      for (int b = 0; b < 2; b++)
        for (int ky = 0; ky < 3; ky++)
          for (int kx = 0; kx < 3; kx++) {
            const int r = (a + ky + 1) / 2 - a, s = (b + kx + 1) / 2 - b;
            folded[(((2 * a + b) * plane + oi) * 2 + r) * 2 + s] += weight[(oi * 3 + ky) * 3 + kx];
          }
  return folded;
}

/* `src` holds the 3x3 weights [out_ch][in_ch][3][3] (from a file or given). */
static UpsampleConv *upsample_conv_make(Ops *ops, WeightSource *src, const float *bias, int in_ch,
                                        int out_ch, gboolean any_size, GError **error) {
  if (!check_positive(in_ch, "input channels", "upsample_conv", error) ||
      !check_positive(out_ch, "output channels", "upsample_conv", error))
    return NULL;
  UpsampleConv *uc = g_new0(UpsampleConv, 1);
  uc->out_ch = out_ch;
  /* The 3x3 first: on a cache miss it reads the data the phases fold. */
  gboolean ok =
      !any_size || (uc->direct = conv2d_make(ops, src, 0, 1, bias, in_ch, out_ch, 3, 1, error));
  const UpsampleDims dims = {in_ch, out_ch};
  WeightSource phases = *src;
  phases.variant = "x2-phases";
  phases.derive = fold_phases;
  phases.derive_arg = &dims;
  float *phases_bias = bias ? g_new(float, 4 * (size_t)out_ch) : NULL;
  for (int phase = 0; bias && phase < 4; phase++)
    memcpy(phases_bias + (size_t)phase * out_ch, bias, out_ch * sizeof(float));
  ok = ok && (uc->phases = conv2d_make(ops, &phases, 0, 1, phases_bias, in_ch, 4 * out_ch, 2, 1,
                                       error)) != NULL;
  weight_source_clear(&phases);
  g_free(phases_bias);
  if (!ok) g_clear_pointer(&uc, upsample_conv_free);
  return uc;
}

UpsampleConv *upsample_conv_new(Ops *ops, const float *weight, const float *bias, int in_ch,
                                int out_ch, gboolean any_size, GError **error) {
  WeightSource src = {.data = weight};
  return upsample_conv_make(ops, &src, bias, in_ch, out_ch, any_size, error);
}

UpsampleConv *upsample_conv_load(Ops *ops, const Weights *w, const char *prefix, int in_ch,
                                 int out_ch, gboolean has_bias, gboolean any_size, GError **error) {
  const int64_t wshape[4] = {out_ch, in_ch, 3, 3};
  WeightSource src = {.w = w, .prefixes = &prefix, .n_prefixes = 1, .ndims = 4, .shape = wshape};
  if (!weight_source_check(&src, error)) return NULL;
  float *bias = has_bias ? load_vector(w, prefix, "bias", out_ch, error) : NULL;
  UpsampleConv *uc = !has_bias || bias
                         ? upsample_conv_make(ops, &src, bias, in_ch, out_ch, any_size, error)
                         : NULL;
  g_free(bias);
  return uc;
}

void upsample_conv_free(UpsampleConv *uc) {
  if (!uc) return;
  conv2d_free(uc->phases);
  conv2d_free(uc->direct);
  g_free(uc);
}

Tensor *upsample_conv(Ops *ops, const UpsampleConv *uc, const Tensor *x, int out_h, int out_w,
                      GError **error) {
  if (!ops_check_tensor(ops, x, "upsample_conv", "input", 0, error)) return NULL;
  if (out_h != 2 * x->h || out_w != 2 * x->w) {
    if (!uc->direct) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                  "upsample_conv: %dx%d -> %dx%d is not x2, and this layer only does x2", x->h,
                  x->w, out_h, out_w);
      return NULL;
    }
    Tensor *up = upsample_nearest(ops, x, out_h, out_w, error);
    Tensor *y = up ? conv2d(ops, uc->direct, up, NULL, ACT_NONE, error) : NULL;
    tensor_free(up);
    return y;
  }
  Tensor *phases = conv2d(ops, uc->phases, x, NULL, ACT_NONE, error);
  if (!phases) return NULL;
  Tensor *out = tensor_try_new(x->n, out_h, out_w, uc->out_ch, ops->dtype, error);
  if (out) {
    const size_t pixel = uc->out_ch * dtype_size(ops->dtype);
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < x->n; n++)
      for (int y = 0; y < out_h; y++) {
        const int a = y & 1, i = y >> 1;
        char *dst = (char *)out->data + ((size_t)n * out_h + y) * out_w * pixel;
        for (int xx = 0; xx < out_w; xx++) {
          const int b = xx & 1, j = xx >> 1;
          const size_t src_pixel = ((size_t)n * phases->h + i + a) * phases->w + j + b;
          memcpy(dst + xx * pixel, (const char *)phases->data + (src_pixel * 4 + 2 * a + b) * pixel,
                 pixel);
        }
      }
  }
  tensor_free(phases);
  return out;
}

/* ---- Linear ------------------------------------------------------------------ */

struct Linear {
  int in_features, out_features;
  PackedWeights weights;
  float *bias;
};

static dnnl_status_t matmul_pd_create(Ops *ops, const Linear *lin, int rows, const Epilogue *ep,
                                      dnnl_primitive_desc_t *pd) {
  const dnnl_dim_t sdims[2] = {rows, lin->in_features};
  const dnnl_dim_t wdims[2] = {lin->in_features, lin->out_features};
  const dnnl_dim_t ddims[2] = {rows, lin->out_features};
  const dnnl_dim_t bdims[2] = {1, lin->out_features};
  dnnl_memory_desc_t src = ops_md(2, sdims, ops->dtype, dnnl_ab);
  dnnl_memory_desc_t weights = ops_md(2, wdims, ops->dtype, dnnl_format_tag_any);
  dnnl_memory_desc_t dst = ops_md(2, ddims, ops->dtype, dnnl_ab);
  dnnl_memory_desc_t channel = ops_md(2, bdims, ops->dtype, dnnl_ab);
  dnnl_memory_desc_t bias = lin->bias ? ops_md(2, bdims, dnnl_f32, dnnl_ab) : NULL;
  dnnl_post_ops_t post_ops = ep ? epilogue_post_ops(ep, dst, channel) : NULL;
  dnnl_primitive_attr_t attr = ops_attr_new(post_ops);
  dnnl_status_t status =
      dnnl_matmul_primitive_desc_create(pd, ops->engine, src, weights, bias, dst, attr);
  dnnl_primitive_attr_destroy(attr);
  if (post_ops) dnnl_post_ops_destroy(post_ops);
  dnnl_memory_desc_destroy(src);
  dnnl_memory_desc_destroy(weights);
  dnnl_memory_desc_destroy(dst);
  dnnl_memory_desc_destroy(channel);
  if (bias) dnnl_memory_desc_destroy(bias);
  return status;
}

/* A linear layer whose weights come from `src` (part `part` of n_parts). */
static Linear *linear_make(Ops *ops, WeightSource *src, int part, int n_parts, const float *bias,
                           int in_features, int out_features, GError **error) {
  if (!check_positive(in_features, "in_features", "linear", error) ||
      !check_positive(out_features, "out_features", "linear", error))
    return NULL;
  Linear *lin = g_new0(Linear, 1);
  lin->in_features = in_features;
  lin->out_features = out_features;
  lin->bias = copy_bias(bias, out_features);
  dnnl_primitive_desc_t pd = NULL;
  dnnl_status_t status = matmul_pd_create(ops, lin, REPRESENTATIVE_ROWS, NULL, &pd);
  if (status != dnnl_success) {
    ops_backend_error(status, "creating a matmul", error);
    linear_free(lin);
    return NULL;
  }
  dnnl_memory_desc_t packed = chosen_weights_md(pd);
  dnnl_primitive_desc_destroy(pd);
  /* Row-major [out, in] is the [in, out] matrix transposed ("ba"). */
  const dnnl_dim_t wdims[2] = {in_features, out_features};
  dnnl_memory_desc_t plain = ops_md(2, wdims, dnnl_f32, dnnl_ba);
  gboolean ok = packed_weights_make(ops, &lin->weights, src, part, n_parts, plain, packed, error);
  dnnl_memory_desc_destroy(plain);
  dnnl_memory_desc_destroy(packed);
  if (!ok) {
    linear_free(lin);
    return NULL;
  }
  return lin;
}

Linear *linear_new(Ops *ops, const float *weight, const float *bias, int in_features,
                   int out_features, GError **error) {
  WeightSource src = {.data = weight};
  return linear_make(ops, &src, 0, 1, bias, in_features, out_features, error);
}

gboolean linear_load_split(Ops *ops, const Weights *w, const char *prefix, int in_features,
                           int n_parts, int out_each, gboolean has_bias, Linear **parts,
                           GError **error) {
  for (int i = 0; i < n_parts; i++) parts[i] = NULL;
  const int64_t wshape[2] = {(int64_t)n_parts * out_each, in_features};
  WeightSource src = {.w = w, .prefixes = &prefix, .n_prefixes = 1, .ndims = 2, .shape = wshape};
  if (!weight_source_check(&src, error)) return FALSE;
  float *bias = has_bias ? load_vector(w, prefix, "bias", wshape[0], error) : NULL;
  gboolean ok = !has_bias || bias;
  for (int i = 0; ok && i < n_parts; i++)
    ok = (parts[i] = linear_make(ops, &src, i, n_parts, bias ? bias + (size_t)i * out_each : NULL,
                                 in_features, out_each, error)) != NULL;
  g_free(bias);
  for (int i = 0; !ok && i < n_parts; i++) g_clear_pointer(&parts[i], linear_free);
  return ok;
}

Linear *linear_load(Ops *ops, const Weights *w, const char *prefix, int in_features,
                    int out_features, gboolean has_bias, GError **error) {
  Linear *lin = NULL;
  linear_load_split(ops, w, prefix, in_features, 1, out_features, has_bias, &lin, error);
  return lin;
}

Linear *linear_load_fused(Ops *ops, const Weights *w, const char *const *prefixes, int n_parts,
                          int in_features, int out_each, gboolean has_bias, GError **error) {
  const int64_t wshape[2] = {out_each, in_features};
  WeightSource src = {
      .w = w, .prefixes = prefixes, .n_prefixes = n_parts, .ndims = 2, .shape = wshape};
  if (!weight_source_check(&src, error)) return NULL;
  float *bias = has_bias ? g_new(float, (size_t)out_each *n_parts) : NULL;
  gboolean ok = TRUE;
  for (int i = 0; i < n_parts && ok && has_bias; i++) {
    float *bi = load_vector(w, prefixes[i], "bias", out_each, error);
    ok = bi != NULL;
    if (ok) memcpy(bias + (size_t)i * out_each, bi, out_each * sizeof(float));
    g_free(bi);
  }
  Linear *lin =
      ok ? linear_make(ops, &src, 0, 1, bias, in_features, out_each * n_parts, error) : NULL;
  g_free(bias);
  return lin;
}

void linear_free(Linear *lin) {
  if (!lin) return;
  packed_weights_clear(&lin->weights);
  free(lin->bias);
  g_free(lin);
}

static Tensor *linear_epilogue(Ops *ops, const Linear *lin, const Tensor *x, const Epilogue *ep,
                               GError **error) {
  if (!ops_check_tensor(ops, x, "linear", "input", lin->in_features, error)) return NULL;
  if (!epilogue_check(ops, ep, x->n, x->h, x->w, lin->out_features, "linear", error)) return NULL;
  /* A per-sample channel vector cannot be one matmul operand over all rows:
   * run each sample on its own. */
  const int runs = epilogue_add_is_broadcast(ep) ? x->n : 1;
  const int rows = (int)(tensor_numel(x) / lin->in_features / runs);
  char *ep_key = epilogue_key(ep);
  char *key = g_strdup_printf("matmul %d>%d bias%d rows%d dt%d %s", lin->in_features,
                              lin->out_features, lin->bias != NULL, rows, (int)ops->dtype, ep_key);
  g_free(ep_key);
  const Primitive *p = ops_primitive_lookup(ops, key);
  if (!p) {
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t status = matmul_pd_create(ops, lin, rows, ep, &pd);
    p = ops_primitive_add(ops, key, status, pd, "creating a matmul", error);
  }
  g_free(key);
  if (!p) return NULL;
  const void *weights = packed_weights_for(ops, (PackedWeights *)&lin->weights, p, error);
  if (!weights) return NULL;
  Tensor *out = tensor_try_new(x->n, x->h, x->w, lin->out_features, ops->dtype, error);
  if (!out) return NULL;
  const size_t elt = dtype_size(ops->dtype);
  for (int r = 0; r < runs; r++) {
    const size_t in_offset = (size_t)r * rows * lin->in_features;
    const size_t out_offset = (size_t)r * rows * lin->out_features;
    OpsArg args[8] = {{DNNL_ARG_SRC, (const char *)x->data + in_offset * elt},
                      {DNNL_ARG_WEIGHTS, weights},
                      {DNNL_ARG_DST, (char *)out->data + out_offset * elt}};
    int n_args = 3;
    if (lin->bias) args[n_args++] = (OpsArg){DNNL_ARG_BIAS, lin->bias};
    n_args = epilogue_args(ep, args, n_args, (size_t)r * lin->out_features, out_offset);
    if (!ops_execute(ops, p, args, n_args, error)) {
      tensor_free(out);
      return NULL;
    }
  }
  return out;
}

Tensor *linear(Ops *ops, const Linear *lin, const Tensor *x, const Tensor *residual, Activation act,
               GError **error) {
  const Epilogue ep = {.add = residual, .act = act};
  return linear_epilogue(ops, lin, x, &ep, error);
}

Tensor *linear_geglu(Ops *ops, const Linear *a, const Linear *b, const Tensor *x, GError **error) {
  if (a->out_features != b->out_features) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                "linear_geglu: the halves have %d and %d outputs", a->out_features,
                b->out_features);
    return NULL;
  }
  Tensor *value = linear(ops, a, x, NULL, ACT_NONE, error);
  if (!value) return NULL;
  const Epilogue ep = {.act = ACT_GELU_ERF, .mul = value};
  Tensor *out = linear_epilogue(ops, b, x, &ep, error);
  tensor_free(value);
  return out;
}

/* ---- Normalization ----------------------------------------------------------- */

struct Norm {
  int channels;
  float *scale, *shift;
};

Norm *norm_new(Ops *ops, const float *scale, const float *shift, int channels, GError **error) {
  (void)ops;
  if (!check_positive(channels, "channels", "norm", error)) return NULL;
  Norm *norm = g_new0(Norm, 1);
  norm->channels = channels;
  norm->scale = copy_bias(scale, channels);
  norm->shift = copy_bias(shift, channels);
  if (!norm->scale || !norm->shift) {
    norm_free(norm);
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "norm: scale and shift are required");
    return NULL;
  }
  return norm;
}

Norm *norm_load(Ops *ops, const Weights *w, const char *prefix, int channels, GError **error) {
  float *scale = load_vector(w, prefix, "weight", channels, error);
  float *shift = scale ? load_vector(w, prefix, "bias", channels, error) : NULL;
  Norm *norm = shift ? norm_new(ops, scale, shift, channels, error) : NULL;
  g_free(scale);
  g_free(shift);
  return norm;
}

void norm_free(Norm *norm) {
  if (!norm) return;
  free(norm->scale);
  free(norm->shift);
  g_free(norm);
}

/* Runs a normalization primitive; statistics are computed on the fly and
 * land in temporary buffers when the primitive exposes them. */
static Tensor *run_norm(Ops *ops, const Primitive *p, const Norm *norm, const Tensor *x,
                        GError **error) {
  Tensor *out = tensor_try_new(x->n, x->h, x->w, x->c, ops->dtype, error);
  if (!out) return NULL;
  OpsArg args[6] = {{DNNL_ARG_SRC, x->data},
                    {DNNL_ARG_DST, out->data},
                    {DNNL_ARG_SCALE, norm->scale},
                    {DNNL_ARG_SHIFT, norm->shift}};
  int n_args = 4;
  void *stats[2] = {NULL, NULL};
  const int stat_args[2] = {DNNL_ARG_MEAN, DNNL_ARG_VARIANCE};
  for (int i = 0; i < 2; i++) {
    const_dnnl_memory_desc_t md =
        dnnl_primitive_desc_query_md(p->pd, dnnl_query_exec_arg_md, stat_args[i]);
    const size_t size = md ? dnnl_memory_desc_get_size(md) : 0;
    if (size == 0) continue;
    stats[i] = aligned_buffer(size);
    args[n_args++] = (OpsArg){stat_args[i], stats[i]};
  }
  gboolean ok = ops_execute(ops, p, args, n_args, error);
  free(stats[0]);
  free(stats[1]);
  if (!ok) {
    tensor_free(out);
    return NULL;
  }
  return out;
}

/* e^x for x <= 0 (to about 2 ulp; 0 below -87), branch-free so that loops
 * over it vectorise: 2^n by the exponent bits, e^r on |r| <= ln2/2 by a
 * degree-6 polynomial. For x <= 0 the bits read as a signed integer grow with
 * |x|, so the clamp at -87 is an integer min: a float select there made GCC
 * split the caller's division into two. */
static inline float exp_nonpositive(float x) {
  const float lowest = -87.0f;
  int32_t bits, lowest_bits;
  memcpy(&bits, &x, sizeof bits);
  memcpy(&lowest_bits, &lowest, sizeof lowest_bits);
  bits = bits < lowest_bits ? bits : lowest_bits;
  memcpy(&x, &bits, sizeof x);
  const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
  const float n = (x * 1.44269504f + round_magic) - round_magic;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f; /* ln2 split in two */
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t scale_bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

/* v sigmoid(v) with one division: t = e^-|v| never overflows, and sigmoid(v)
 * is 1/(1+t) for v >= 0, t/(1+t) below. NaN stays NaN. */
static inline float silu_vectorisable(float v) {
  const float t = exp_nonpositive(-fabsf(v));
  const float r = 1.0f / (1.0f + t);
  return v * (v >= 0 ? r : t * r);
}

/* ---- Group norm by hand ------------------------------------------------------ *
 * oneDNN 3.7's group norm (jit_group:uni) runs 5-20x below memory bandwidth
 * with NHWC at 128-512 channels, in fp32 (AVX2) and bf16 (AVX-512) alike: a
 * fifth of a VAE decode. This kernel serves both dtypes: bf16 <-> fp32 is a
 * shift, the arithmetic is fp32, the statistics join in double. The per-row
 * loops are compiled for AVX-512, AVX2 and plain x86-64 and the best one is
 * picked at run time (ifunc); the pixel loop is split over OpenMP threads. */

#if defined(__x86_64__) && defined(__GNUC__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* Pixels whose sums are taken in fp32 before they join the double totals:
 * exact enough, and fp32 runs twice as many lanes. */
#define GROUP_NORM_CHUNK 64

/* A row of `count` values of `dtype` as fp32: the row itself when it is
 * fp32, else converted into `scratch`. */
static inline const float *row_as_f32(const void *row, dnnl_data_type_t dtype, int count,
                                      float *scratch) {
  if (dtype == dnnl_f32) return row;
  const uint16_t *bf = row;
  uint32_t *bits = (uint32_t *)scratch;
#pragma omp simd
  for (int k = 0; k < count; k++) bits[k] = (uint32_t)bf[k] << 16;
  return scratch;
}

/* Per-channel sums and sums of squares of `pixels` rows of c values, added
 * to sum[c] and squares[c]; scratch holds 3c floats. */
VECTOR_CLONES static void group_norm_sums(const void *src, dnnl_data_type_t dtype, size_t pixels,
                                          int c, double *sum, double *squares, float *scratch) {
  float *chunk_sum = scratch, *chunk_squares = scratch + c, *converted = scratch + 2 * c;
  const size_t row_bytes = c * dtype_size(dtype);
  for (size_t first = 0; first < pixels; first += GROUP_NORM_CHUNK) {
    const size_t last = MIN(first + GROUP_NORM_CHUNK, pixels);
    memset(chunk_sum, 0, 2 * c * sizeof(float));
    for (size_t p = first; p < last; p++) {
      const float *x = row_as_f32((const char *)src + p * row_bytes, dtype, c, converted);
#pragma omp simd
      for (int k = 0; k < c; k++) {
        chunk_sum[k] += x[k];
        chunk_squares[k] += x[k] * x[k];
      }
    }
    for (int k = 0; k < c; k++) {
      sum[k] += chunk_sum[k];
      squares[k] += chunk_squares[k];
    }
  }
}

/* y = (x - mean) a + shift per channel (then SiLU) over `pixels` rows of c
 * values; scratch holds c floats. Subtracting the mean first keeps groups of
 * near-zero variance (a = scale / sqrt(eps)) exact. */
VECTOR_CLONES static void group_norm_apply(const void *src, void *dst, dnnl_data_type_t dtype,
                                           size_t pixels, int c, const float *mean, const float *a,
                                           const float *shift, gboolean silu, float *scratch) {
  const size_t row_bytes = c * dtype_size(dtype);
  for (size_t p = 0; p < pixels; p++) {
    const float *x = row_as_f32((const char *)src + p * row_bytes, dtype, c, scratch);
    float *y = dtype == dnnl_f32 ? (float *)((char *)dst + p * row_bytes) : scratch;
    if (silu) {
#pragma omp simd
      for (int k = 0; k < c; k++) y[k] = silu_vectorisable((x[k] - mean[k]) * a[k] + shift[k]);
    } else {
#pragma omp simd
      for (int k = 0; k < c; k++) y[k] = (x[k] - mean[k]) * a[k] + shift[k];
    }
    if (dtype == dnnl_bf16) {
      uint16_t *out = (uint16_t *)((char *)dst + p * row_bytes);
#pragma omp simd
      for (int k = 0; k < c; k++) out[k] = f32_to_bf16(y[k]);
    }
  }
}

/* Pixels per OpenMP work item of the group norm's two passes. */
#define GROUP_NORM_BLOCK 256

Tensor *group_norm_nhwc(const Norm *norm, const Tensor *x, int groups, float eps, Activation act,
                        GError **error) {
  Tensor *out = tensor_try_new(x->n, x->h, x->w, x->c, x->dtype, error);
  if (!out) return NULL;
  const int c = x->c, per_group = c / groups;
  const size_t pixels = (size_t)x->h * x->w, image_bytes = pixels * c * dtype_size(x->dtype);
  const size_t row_bytes = c * dtype_size(x->dtype);
  const size_t blocks = (pixels + GROUP_NORM_BLOCK - 1) / GROUP_NORM_BLOCK;
  double *sum = g_new(double, 2 * c), *squares = sum + c;
  float *mean = g_new(float, 2 * c), *a = mean + c;
  for (int n = 0; n < x->n; n++) {
    const char *src = (const char *)x->data + n * image_bytes;
    char *dst = (char *)out->data + n * image_bytes;
    memset(sum, 0, 2 * c * sizeof(double));
#pragma omp parallel
    {
      double *local = g_new0(double, 2 * c);
      float *scratch = g_new(float, 3 * c);
#pragma omp for schedule(static) nowait
      for (size_t block = 0; block < blocks; block++) {
        const size_t first = block * GROUP_NORM_BLOCK;
        group_norm_sums(src + first * row_bytes, x->dtype, MIN(GROUP_NORM_BLOCK, pixels - first), c,
                        local, local + c, scratch);
      }
#pragma omp critical
      for (int k = 0; k < 2 * c; k++) sum[k] += local[k];
      g_free(local);
      g_free(scratch);
    }
    for (int g = 0; g < groups; g++) {
      double s = 0, q = 0;
      for (int k = g * per_group; k < (g + 1) * per_group; k++) {
        s += sum[k];
        q += squares[k];
      }
      const double count = (double)pixels * per_group, group_mean = s / count;
      const double rstd = 1.0 / sqrt(MAX(q / count - group_mean * group_mean, 0.0) + eps);
      for (int k = g * per_group; k < (g + 1) * per_group; k++) {
        mean[k] = (float)group_mean;
        a[k] = (float)(rstd * norm->scale[k]);
      }
    }
#pragma omp parallel
    {
      float *scratch = g_new(float, c);
#pragma omp for schedule(static)
      for (size_t block = 0; block < blocks; block++) {
        const size_t first = block * GROUP_NORM_BLOCK;
        group_norm_apply(src + first * row_bytes, dst + first * row_bytes, x->dtype,
                         MIN(GROUP_NORM_BLOCK, pixels - first), c, mean, a, norm->shift,
                         act == ACT_SILU, scratch);
      }
      g_free(scratch);
    }
  }
  g_free(sum);
  g_free(mean);
  return out;
}

Tensor *group_norm(Ops *ops, const Norm *norm, const Tensor *x, int groups, float eps,
                   Activation act, GError **error) {
  if (!ops_check_tensor(ops, x, "group_norm", "input", norm->channels, error)) return NULL;
  if (groups <= 0 || x->c % groups != 0 || (act != ACT_NONE && act != ACT_SILU)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "group_norm: %d groups over %d channels%s",
                groups, x->c,
                act != ACT_NONE && act != ACT_SILU ? " with an activation other than SiLU" : "");
    return NULL;
  }
  return group_norm_nhwc(norm, x, groups, eps, act, error);
}

Tensor *layer_norm(Ops *ops, const Norm *norm, const Tensor *x, float eps, GError **error) {
  if (!ops_check_tensor(ops, x, "layer_norm", "input", norm->channels, error)) return NULL;
  const int rows = (int)(tensor_numel(x) / x->c);
  char *key = g_strdup_printf("layer_norm %d rows%d eps%a dt%d", x->c, rows, eps, (int)ops->dtype);
  const Primitive *p = ops_primitive_lookup(ops, key);
  if (!p) {
    const dnnl_dim_t dims[2] = {rows, x->c};
    dnnl_memory_desc_t md = ops_md(2, dims, ops->dtype, dnnl_ab);
    dnnl_primitive_attr_t attr = ops_attr_new(NULL);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t status = dnnl_layer_normalization_forward_primitive_desc_create_v2(
        &pd, ops->engine, dnnl_forward_inference, md, md, NULL, dnnl_f32, eps,
        dnnl_use_scale | dnnl_use_shift, attr);
    dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_destroy(md);
    p = ops_primitive_add(ops, key, status, pd, "creating a layer normalization", error);
  }
  g_free(key);
  return p ? run_norm(ops, p, norm, x, error) : NULL;
}
