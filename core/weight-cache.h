/* The packed-weight cache on disk: one file per network holding every
 * layer's weights in the layouts oneDNN picked (docs/architecture.md,
 * "Weight cache"), mapped at load so that a fresh process skips reading,
 * converting and reordering them. Internal to the op layer. */
#pragma once

#include "ops-internal.h"

typedef struct WeightCache WeightCache;

/* The cache folder, or NULL when the cache is off (g_free it): the override
 * of lcm_weight_cache_set_enabled, else GIMP_LCM_WEIGHT_CACHE ("off" or a
 * folder), else g_get_user_cache_dir()/gimp-lcm/weights. */
char *weight_cache_dir(void);

/* The entry of `network` (e.g. "unet") for these weights in `dtype`, read
 * when a valid one exists, or an empty one that weight_cache_store fills.
 * NULL when the cache is off. A missing, stale, truncated or damaged file is
 * never an error: its layers are simply packed from the model again. */
WeightCache *weight_cache_open(const char *network, dnnl_data_type_t dtype, const Weights *w);
void weight_cache_free(WeightCache *cache);

/* Fills `pw` with the cached layouts of layer `name` when the entry holds
 * them with the dims and data type of `expected`; their data stays in the
 * mapping (valid until weight_cache_free). */
gboolean weight_cache_take(WeightCache *cache, const char *name, const_dnnl_memory_desc_t expected,
                           PackedWeights *pw);
/* Makes `pw` part of the next weight_cache_store, under `name` (unique per
 * network: FALSE if already taken, and then it is not cached). */
gboolean weight_cache_register(WeightCache *cache, const char *name, PackedWeights *pw);
void weight_cache_unregister(WeightCache *cache, const char *name);
/* A registered layer gained a layout: the entry is out of date. */
void weight_cache_changed(WeightCache *cache);
/* Writes the entry (temp file + rename) if out of date, then evicts the
 * least recently used entries beyond the size bound, on a thread of its
 * own. Failure only costs the next process time, so it is reported through
 * g_debug. */
void weight_cache_store(WeightCache *cache);
/* Waits for a write in progress: before a registered layout is freed or
 * replaced (weight_cache_changed and weight_cache_free wait by themselves). */
void weight_cache_wait(WeightCache *cache);
/* Whether the entry was read from disk (for tests and the benchmark). */
gboolean weight_cache_was_read(const WeightCache *cache);
