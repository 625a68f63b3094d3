/* Shared machinery of the ops-*.c files: the Ops context, the primitive
 * cache, execution, packed weights and fused epilogues. Not for callers of
 * ops.h. */
#pragma once

#include "ops.h"

#include <string.h>

typedef struct WeightCache WeightCache;

struct Ops {
  LcmPrecision precision;
  dnnl_data_type_t dtype;
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  GHashTable *primitives; /* key string -> Primitive */
  /* One scratchpad for every primitive (they run one at a time). */
  void *scratchpad;
  size_t scratchpad_size;
  /* Layers convert their weights to fp32 here on the way to being packed:
   * one buffer reused layer after layer, freed by ops_load_done. */
  float *load_buffer;
  size_t load_buffer_size;
  WeightCache *weight_cache; /* NULL: off; see ops_use_weight_cache */
  int attention_chunk;       /* 0 = default */
  volatile gint *cancel;     /* see ops_set_cancel; NULL = never */
};

typedef struct {
  dnnl_primitive_desc_t pd;
  dnnl_primitive_t primitive;
} Primitive;

/* The cached primitive for `key`, or NULL. */
const Primitive *ops_primitive_lookup(Ops *ops, const char *key);
/* Takes the result of a *_primitive_desc_create call (status, pd) and
 * caches a primitive for it under `key`; `what` names the operation in
 * errors. */
const Primitive *ops_primitive_add(Ops *ops, const char *key, dnnl_status_t status,
                                   dnnl_primitive_desc_t pd, const char *what, GError **error);

typedef struct {
  int arg; /* DNNL_ARG_* */
  const void *data;
} OpsArg;

/* Runs a primitive on user buffers; memory objects are made from the
 * primitive's own descriptors, the scratchpad is the Ops' shared one. */
gboolean ops_execute(Ops *ops, const Primitive *p, const OpsArg *args, int n_args, GError **error);

/* A primitive attribute with the user scratchpad and optional post-ops. */
dnnl_primitive_attr_t ops_attr_new(dnnl_post_ops_t post_ops);
void ops_post_ops_append_act(dnnl_post_ops_t post_ops, Activation act);

gboolean ops_backend_error(dnnl_status_t status, const char *what, GError **error);

dnnl_memory_desc_t ops_md(int ndims, const dnnl_dim_t *dims, dnnl_data_type_t dtype,
                          dnnl_format_tag_t tag);
dnnl_memory_desc_t ops_md_strided(int ndims, const dnnl_dim_t *dims, dnnl_data_type_t dtype,
                                  const dnnl_dim_t *strides);
/* dims in oneDNN's logical order {n, c, h, w}, stored channels-last. */
dnnl_memory_desc_t ops_md_nhwc(int n, int c, int h, int w, dnnl_data_type_t dtype);

/* ---- Tensors --------------------------------------------------------------- */

size_t dtype_size(dnnl_data_type_t dtype);
/* tensor_new that reports allocation failure. */
Tensor *tensor_try_new(int n, int h, int w, int c, dnnl_data_type_t dtype, GError **error);
gboolean ops_check_tensor(const Ops *ops, const Tensor *t, const char *op, const char *what,
                          int channels, GError **error);
void *aligned_buffer(size_t bytes);

/* Round to nearest even; NaN stays a (quiet) NaN. Branch-free, so that
 * loops over it vectorise. */
static inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

static inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* Element i of a buffer of `dtype` (f32 or bf16) as fp32, and back. */
static inline float element_get(const void *data, dnnl_data_type_t dtype, size_t i) {
  return dtype == dnnl_bf16 ? bf16_to_f32(((const uint16_t *)data)[i]) : ((const float *)data)[i];
}

static inline void element_set(void *data, dnnl_data_type_t dtype, size_t i, float v) {
  if (dtype == dnnl_bf16)
    ((uint16_t *)data)[i] = f32_to_bf16(v);
  else
    ((float *)data)[i] = v;
}

/* ---- Packed weights -------------------------------------------------------- *
 * Weights live in the layout a primitive chose for them. The layout oneDNN
 * picks can depend on the activation shape (e.g. odd spatial sizes), so a
 * layer keeps every layout it has been asked for, each made once by a
 * reorder from the first; the load-time guess is dropped if no primitive
 * ever wanted it, so weights are held twice only when really used twice.   */

typedef struct {
  dnnl_memory_desc_t md;
  void *data;
  gboolean used;   /* a primitive has asked for it */
  gboolean mapped; /* data lies in the weight cache's mapping: not ours to free */
} WeightLayout;

typedef struct {
  WeightLayout *layouts;
  int n_layouts;
  WeightCache *cache; /* NULL, or the cache that stores these layouts */
  char *cache_name;   /* the layer's name in the cache */
} PackedWeights;

/* Packs fp32 weights described by `plain_md` into `packed_md`. */
gboolean packed_weights_init(Ops *ops, PackedWeights *pw, const_dnnl_memory_desc_t plain_md,
                             const float *plain, const_dnnl_memory_desc_t packed_md,
                             GError **error);
/* Where a layer's fp32 weights come from when they must be packed: `data`
 * (given), or PREFIX.weight of `shape` for each of `prefixes`, concatenated,
 * read into the Ops' load buffer on first need: not at all when the weight
 * cache holds the layer. */
typedef struct {
  const float *data;
  const Weights *w;
  const char *const *prefixes;
  int n_prefixes;
  int ndims;
  const int64_t *shape; /* of each prefix's tensor */
  /* Optional: the layer's weights are derive(data) rather than the data
   * (upsample_conv's folded phases), named "NAME:variant" in the cache, so
   * a cached layer skips both the read and the derivation. */
  const char *variant;
  float *(*derive)(const float *data, const void *arg, GError **error);
  const void *derive_arg;
  float *derived; /* derive's result, freed by weight_source_clear */
} WeightSource;

/* The source's fp32 data, derived if so asked (read now if not yet); NULL
 * on error. */
const float *weight_source_data(Ops *ops, WeightSource *src, GError **error);
void weight_source_clear(WeightSource *src);
/* Part `part` of `n_parts` equal slices of the source (each `plain_md`)
 * packed into `packed_md`, or the layouts the weight cache holds for it;
 * every layer made this way from a file is stored in the cache. */
gboolean packed_weights_make(Ops *ops, PackedWeights *pw, WeightSource *src, int part, int n_parts,
                             const_dnnl_memory_desc_t plain_md, const_dnnl_memory_desc_t packed_md,
                             GError **error);
/* The weights in the layout the primitive wants, made now if new. */
const void *packed_weights_for(Ops *ops, PackedWeights *pw, const Primitive *p, GError **error);
void packed_weights_clear(PackedWeights *pw);

/* ---- Epilogues ------------------------------------------------------------- *
 * out = mul * act(op(x) + bias + add): `add` is the residual (output's shape
 * or [n,1,1,c]), `mul` the GEGLU gate (output's shape).                      */

typedef struct {
  const Tensor *add;
  Activation act;
  const Tensor *mul;
} Epilogue;

/* Validates the epilogue tensors against an output [n, h, w, c]. */
gboolean epilogue_check(const Ops *ops, const Epilogue *ep, int n, int h, int w, int c,
                        const char *op, GError **error);
gboolean epilogue_add_is_broadcast(const Epilogue *ep);
/* A key fragment describing the epilogue; g_free it. */
char *epilogue_key(const Epilogue *ep);
/* Post-ops for the epilogue; full and broadcast are the binary operand
 * descriptors matching the primitive's dst (broadcast only used for a
 * per-channel add). */
dnnl_post_ops_t epilogue_post_ops(const Epilogue *ep, const_dnnl_memory_desc_t full,
                                  const_dnnl_memory_desc_t broadcast);
/* Appends the epilogue's binary operands (offset into their buffers) to args. */
int epilogue_args(const Epilogue *ep, OpsArg *args, int n_args, size_t add_offset,
                  size_t mul_offset);

/* ---- Group norm -------------------------------------------------------------- */

/* The group norm of `x` in its own dtype (f32 or bf16), whatever the Ops
 * compute in, so that both dtypes are tested on every CPU; act is ACT_NONE
 * or ACT_SILU and groups divides x->c (group_norm checks both). */
Tensor *group_norm_nhwc(const Norm *norm, const Tensor *x, int groups, float eps, Activation act,
                        GError **error);
