/* The packed-weight cache on disk (see weight-cache.h).
 *
 * File layout (host byte order: an entry is only valid on the machine,
 * oneDNN version and ISA its key names):
 *   FileHeader | key text | index | layer data, each at a 4096-byte boundary
 * index: per layer  u32 name length, name, u32 layouts,
 *        per layout u32 blob length, oneDNN memory desc blob, u32 used,
 *                   u64 offset, u64 size
 * The SHA-256 in the header covers the key text and the index, so a damaged
 * header or index is never trusted; the data is not checksummed (reading
 * it all would cost what the cache saves). */
#include "weight-cache.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bump whenever a layer's packed bytes change meaning under the same name. */
#define CACHE_FORMAT_VERSION 1
#define CACHE_MAGIC "LCMWCACH"
#define CACHE_SUFFIX ".lcmw"
#define DATA_ALIGNMENT 4096
#define DEFAULT_MAX_MB 12288
/* A temp file older than this belongs to a process that died while writing. */
#define STALE_TEMP_SECONDS 3600

typedef struct {
  char magic[8];
  uint32_t version;
  uint32_t key_size;
  uint64_t index_size;
  uint64_t file_size;
  uint8_t checksum[32]; /* SHA-256 of key text + index */
} FileHeader;

typedef struct {
  WeightLayout *layouts;
  int n_layouts;
} CachedLayer;

struct WeightCache {
  char *dir, *path, *key;
  void *mapping;
  size_t mapping_size;
  GHashTable *cached;     /* name -> CachedLayer*, from the file, until taken */
  GHashTable *registered; /* name (owned) -> PackedWeights* of the loaded network */
  gboolean read, dirty;
  GThread *writer; /* writing the entry in the background, or NULL */
};

static int enabled_override = -1; /* -1: the environment decides */

void lcm_weight_cache_set_enabled(gboolean enabled) {
  enabled_override = enabled ? 1 : 0;
}

char *weight_cache_dir(void) {
  if (enabled_override == 0) return NULL;
  const char *env = g_getenv("GIMP_LCM_WEIGHT_CACHE");
  if (env && enabled_override != 1) {
    if (!*env || !g_ascii_strcasecmp(env, "off") || !g_ascii_strcasecmp(env, "0") ||
        !g_ascii_strcasecmp(env, "no") || !g_ascii_strcasecmp(env, "false"))
      return NULL;
    return g_strdup(env);
  }
  if (env && g_path_is_absolute(env)) return g_strdup(env);
  return g_build_filename(g_get_user_cache_dir(), "gimp-lcm", "weights", NULL);
}

static guint64 max_bytes(void) {
  const char *env = g_getenv("GIMP_LCM_WEIGHT_CACHE_MAX_MB");
  guint64 mb = DEFAULT_MAX_MB;
  if (env && !g_ascii_string_to_unsigned(env, 10, 0, G_MAXUINT32, &mb, NULL)) mb = DEFAULT_MAX_MB;
  return mb << 20;
}

static void cached_layer_free(gpointer data) {
  CachedLayer *layer = data;
  for (int i = 0; i < layer->n_layouts; i++) dnnl_memory_desc_destroy(layer->layouts[i].md);
  g_free(layer->layouts);
  g_free(layer);
}

/* ---- Reading ------------------------------------------------------------------ */

typedef struct {
  const uint8_t *p, *end;
} Reader;

static gboolean read_bytes(Reader *r, void *dst, size_t n) {
  if ((size_t)(r->end - r->p) < n) return FALSE;
  memcpy(dst, r->p, n);
  r->p += n;
  return TRUE;
}

static gboolean read_u32(Reader *r, uint32_t *v) {
  return read_bytes(r, v, sizeof *v);
}

static gboolean read_u64(Reader *r, uint64_t *v) {
  return read_bytes(r, v, sizeof *v);
}

/* Size of a oneDNN memory descriptor blob (fixed for a oneDNN build). */
static size_t md_blob_size(void) {
  const dnnl_dim_t dims[1] = {1};
  dnnl_memory_desc_t md = ops_md(1, dims, dnnl_f32, dnnl_a);
  size_t size = 0;
  dnnl_memory_desc_get_blob(NULL, &size, md);
  dnnl_memory_desc_destroy(md);
  return size;
}

static void checksum_key_and_index(const char *key, const void *index, size_t index_size,
                                   uint8_t out[32]) {
  GChecksum *sum = g_checksum_new(G_CHECKSUM_SHA256);
  g_checksum_update(sum, (const guchar *)key, strlen(key));
  g_checksum_update(sum, index, index_size);
  gsize len = 32;
  g_checksum_get_digest(sum, out, &len);
  g_checksum_free(sum);
}

/* One layout of the index, checked against the file: in bounds, aligned,
 * and as large as its descriptor says. */
static gboolean parse_layout(Reader *r, const FileHeader *h, size_t data_start, size_t blob_size,
                             WeightLayout *layout, const uint8_t *base) {
  uint32_t len = 0, used = 0;
  uint64_t offset = 0, size = 0;
  if (!read_u32(r, &len) || len != blob_size || (size_t)(r->end - r->p) < len) return FALSE;
  const uint8_t *blob = r->p;
  r->p += len;
  if (!read_u32(r, &used) || !read_u64(r, &offset) || !read_u64(r, &size)) return FALSE;
  if (offset < data_start || offset % DATA_ALIGNMENT || offset > h->file_size ||
      size > h->file_size - offset)
    return FALSE;
  uint8_t *aligned_blob = g_memdup2(blob, len); /* the API may read it as a struct */
  dnnl_memory_desc_t md = NULL;
  dnnl_status_t status = dnnl_memory_desc_create_with_blob(&md, aligned_blob);
  g_free(aligned_blob);
  if (status != dnnl_success) return FALSE;
  if (dnnl_memory_desc_get_size(md) != size) {
    dnnl_memory_desc_destroy(md);
    return FALSE;
  }
  *layout = (WeightLayout){md, (void *)(base + offset), used != 0, TRUE};
  return TRUE;
}

static gboolean parse_index(WeightCache *cache, const FileHeader *h, const uint8_t *index) {
  const size_t data_start = sizeof *h + h->key_size + h->index_size;
  const size_t blob_size = md_blob_size();
  Reader r = {index, index + h->index_size};
  while (r.p < r.end) {
    uint32_t name_len = 0, n_layouts = 0;
    if (!read_u32(&r, &name_len) || name_len == 0 || (size_t)(r.end - r.p) < name_len) return FALSE;
    char *name = g_strndup((const char *)r.p, name_len);
    r.p += name_len;
    CachedLayer *layer = g_new0(CachedLayer, 1);
    g_hash_table_replace(cache->cached, name, layer);
    if (!read_u32(&r, &n_layouts) || n_layouts == 0 || n_layouts > 64) return FALSE;
    layer->layouts = g_new0(WeightLayout, n_layouts);
    for (; layer->n_layouts < (int)n_layouts; layer->n_layouts++)
      if (!parse_layout(&r, h, data_start, blob_size, &layer->layouts[layer->n_layouts],
                        cache->mapping))
        return FALSE;
  }
  return TRUE;
}

/* Maps and validates the file; FALSE (and nothing kept) if it is absent,
 * stale, truncated or damaged. */
static gboolean read_file(WeightCache *cache) {
  int fd = g_open(cache->path, O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) return FALSE;
  struct stat st;
  gboolean ok = fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(FileHeader);
  if (ok) {
    cache->mapping_size = st.st_size;
    cache->mapping = mmap(NULL, cache->mapping_size, PROT_READ, MAP_PRIVATE, fd, 0);
    ok = cache->mapping != MAP_FAILED;
    if (!ok) cache->mapping = NULL;
  }
  close(fd);
  if (!ok) return FALSE;
  FileHeader h;
  memcpy(&h, cache->mapping, sizeof h);
  const size_t key_size = strlen(cache->key);
  ok = memcmp(h.magic, CACHE_MAGIC, 8) == 0 && h.version == CACHE_FORMAT_VERSION &&
       h.file_size == cache->mapping_size && h.key_size == key_size &&
       h.index_size <= h.file_size - sizeof h - key_size &&
       memcmp((const char *)cache->mapping + sizeof h, cache->key, key_size) == 0;
  const uint8_t *index = (const uint8_t *)cache->mapping + sizeof h + key_size;
  if (ok) {
    uint8_t sum[32];
    checksum_key_and_index(cache->key, index, h.index_size, sum);
    ok = memcmp(sum, h.checksum, 32) == 0 && parse_index(cache, &h, index);
  }
  if (!ok) {
    g_debug("weight cache: %s is damaged or stale; rebuilding it", cache->path);
    g_hash_table_remove_all(cache->cached);
    munmap(cache->mapping, cache->mapping_size);
    cache->mapping = NULL;
    return FALSE;
  }
  /* Start reading a cold file in the background; mark it recently used. */
  madvise(cache->mapping, cache->mapping_size, MADV_WILLNEED);
  utimensat(AT_FDCWD, cache->path, NULL, 0);
  return TRUE;
}

/* ---- Opening ------------------------------------------------------------------ */

static char *cache_key(const char *network, dnnl_data_type_t dtype, const Weights *w) {
  char *identity = weights_identity(w);
  if (!identity) return NULL;
  const dnnl_version_t *v = dnnl_version();
  char *key =
      g_strdup_printf("gimp-lcm packed weights %d\nnetwork %s\ndtype %s\n"
                      "onednn %d.%d.%d %s\nisa %d\n%s",
                      CACHE_FORMAT_VERSION, network, dtype == dnnl_bf16 ? "bf16" : "f32", v->major,
                      v->minor, v->patch, v->hash, (int)dnnl_get_effective_cpu_isa(), identity);
  g_free(identity);
  return key;
}

WeightCache *weight_cache_open(const char *network, dnnl_data_type_t dtype, const Weights *w) {
  char *dir = weight_cache_dir();
  if (!dir) return NULL;
  char *key = cache_key(network, dtype, w);
  if (!key) {
    g_free(dir);
    return NULL;
  }
  WeightCache *cache = g_new0(WeightCache, 1);
  cache->dir = dir;
  cache->key = key;
  char *hash = g_compute_checksum_for_string(G_CHECKSUM_SHA256, key, -1);
  char *file = g_strdup_printf("%s-%.32s%s", network, hash, CACHE_SUFFIX);
  cache->path = g_build_filename(dir, file, NULL);
  g_free(file);
  g_free(hash);
  cache->cached = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, cached_layer_free);
  cache->registered = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  cache->read = read_file(cache);
  return cache;
}

void weight_cache_free(WeightCache *cache) {
  if (!cache) return;
  weight_cache_wait(cache);
  g_hash_table_destroy(cache->cached);
  g_hash_table_destroy(cache->registered);
  if (cache->mapping) munmap(cache->mapping, cache->mapping_size);
  g_free(cache->dir);
  g_free(cache->path);
  g_free(cache->key);
  g_free(cache);
}

gboolean weight_cache_was_read(const WeightCache *cache) {
  return cache && cache->read;
}

static gboolean same_dims_and_type(const_dnnl_memory_desc_t a, const_dnnl_memory_desc_t b) {
  int na = 0, nb = 0;
  const dnnl_dims_t *da = NULL, *db = NULL;
  dnnl_data_type_t ta = dnnl_data_type_undef, tb = dnnl_data_type_undef;
  dnnl_memory_desc_query(a, dnnl_query_ndims_s32, &na);
  dnnl_memory_desc_query(b, dnnl_query_ndims_s32, &nb);
  dnnl_memory_desc_query(a, dnnl_query_dims, &da);
  dnnl_memory_desc_query(b, dnnl_query_dims, &db);
  dnnl_memory_desc_query(a, dnnl_query_data_type, &ta);
  dnnl_memory_desc_query(b, dnnl_query_data_type, &tb);
  return na == nb && ta == tb && memcmp(*da, *db, na * sizeof(dnnl_dim_t)) == 0;
}

gboolean weight_cache_take(WeightCache *cache, const char *name, const_dnnl_memory_desc_t expected,
                           PackedWeights *pw) {
  CachedLayer *layer = cache ? g_hash_table_lookup(cache->cached, name) : NULL;
  if (!layer) return FALSE;
  for (int i = 0; i < layer->n_layouts; i++)
    if (!same_dims_and_type(layer->layouts[i].md, expected)) return FALSE;
  pw->layouts = g_steal_pointer(&layer->layouts);
  pw->n_layouts = layer->n_layouts;
  layer->n_layouts = 0;
  g_hash_table_remove(cache->cached, name);
  return TRUE;
}

gboolean weight_cache_register(WeightCache *cache, const char *name, PackedWeights *pw) {
  if (g_hash_table_contains(cache->registered, name)) return FALSE;
  g_hash_table_insert(cache->registered, g_strdup(name), pw);
  return TRUE;
}

void weight_cache_unregister(WeightCache *cache, const char *name) {
  g_hash_table_remove(cache->registered, name);
}

void weight_cache_changed(WeightCache *cache) {
  weight_cache_wait(cache); /* the caller may free a layout the writer reads next */
  cache->dirty = TRUE;
}

void weight_cache_wait(WeightCache *cache) {
  if (cache && cache->writer) g_thread_join(g_steal_pointer(&cache->writer));
}

/* ---- Writing ------------------------------------------------------------------ */

static void put_u32(GByteArray *b, uint32_t v) {
  g_byte_array_append(b, (const guint8 *)&v, sizeof v);
}

static void put_u64(GByteArray *b, uint64_t v) {
  g_byte_array_append(b, (const guint8 *)&v, sizeof v);
}

static uint64_t align_up(uint64_t v) {
  return (v + DATA_ALIGNMENT - 1) / DATA_ALIGNMENT * DATA_ALIGNMENT;
}

static int compare_strings(gconstpointer a, gconstpointer b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A layout's bytes, written at the offset the index gives it. */
typedef struct {
  const void *data;
  size_t size;
} WriteChunk;

/* The index for the registered layers (sorted by name) and the file size,
 * and each layout's data appended to `chunks` in file order; data offsets
 * start after the header, key and index, whose size must be known first:
 * the index has a fixed size for given names and layouts. */
static GByteArray *build_index(WeightCache *cache, GPtrArray *names, uint64_t *file_size,
                               GArray *chunks) {
  const size_t blob_size = md_blob_size();
  uint64_t index_size = 0;
  for (guint i = 0; i < names->len; i++) {
    const PackedWeights *pw = g_hash_table_lookup(cache->registered, names->pdata[i]);
    index_size += 8 + strlen(names->pdata[i]) + pw->n_layouts * (4 + blob_size + 4 + 16);
  }
  uint64_t offset = align_up(sizeof(FileHeader) + strlen(cache->key) + index_size);
  GByteArray *index = g_byte_array_sized_new(index_size);
  uint8_t *blob = g_malloc(blob_size);
  for (guint i = 0; i < names->len; i++) {
    const char *name = names->pdata[i];
    const PackedWeights *pw = g_hash_table_lookup(cache->registered, name);
    put_u32(index, strlen(name));
    g_byte_array_append(index, (const guint8 *)name, strlen(name));
    put_u32(index, pw->n_layouts);
    for (int k = 0; k < pw->n_layouts; k++) {
      size_t len = blob_size;
      dnnl_memory_desc_get_blob(blob, &len, pw->layouts[k].md);
      const size_t size = dnnl_memory_desc_get_size(pw->layouts[k].md);
      put_u32(index, blob_size);
      g_byte_array_append(index, blob, blob_size);
      put_u32(index, pw->layouts[k].used);
      put_u64(index, offset);
      put_u64(index, size);
      offset = align_up(offset + size);
      const WriteChunk chunk = {pw->layouts[k].data, size};
      g_array_append_val(chunks, chunk);
    }
  }
  g_free(blob);
  *file_size = offset;
  return index;
}

static gboolean write_all(int fd, const void *data, size_t size) {
  const char *p = data;
  while (size > 0) {
    ssize_t n = write(fd, p, MIN(size, (size_t)1 << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return FALSE;
    p += n;
    size -= n;
  }
  return TRUE;
}

static gboolean write_padding(int fd, uint64_t *at, uint64_t to) {
  static const uint8_t zeros[DATA_ALIGNMENT];
  const size_t n = to - *at;
  *at = to;
  return write_all(fd, zeros, n);
}

/* What the writer thread needs, taken when the write starts: the layers'
 * data stays valid until weight_cache_wait (every path that frees or
 * replaces a registered layout waits first). */
typedef struct {
  char *dir, *path, *key;
  GByteArray *index;
  uint64_t file_size;
  GArray *chunks; /* WriteChunk, in file order */
} WriteJob;

static gboolean write_entry(const WriteJob *job, int fd) {
  FileHeader h = {.version = CACHE_FORMAT_VERSION,
                  .key_size = strlen(job->key),
                  .index_size = job->index->len,
                  .file_size = job->file_size};
  memcpy(h.magic, CACHE_MAGIC, 8);
  checksum_key_and_index(job->key, job->index->data, job->index->len, h.checksum);
  uint64_t at = sizeof h + h.key_size + job->index->len;
  gboolean ok = write_all(fd, &h, sizeof h) && write_all(fd, job->key, h.key_size) &&
                write_all(fd, job->index->data, job->index->len);
  for (guint i = 0; ok && i < job->chunks->len; i++) {
    const WriteChunk *c = &g_array_index(job->chunks, WriteChunk, i);
    ok = write_padding(fd, &at, align_up(at)) && write_all(fd, c->data, c->size);
    at += c->size;
  }
  return ok && write_padding(fd, &at, job->file_size);
}

typedef struct {
  char *path;
  guint64 size;
  gint64 mtime;
} CacheFile;

static int compare_mtime(gconstpointer a, gconstpointer b) {
  const CacheFile *x = a, *y = b;
  return x->mtime < y->mtime ? -1 : x->mtime > y->mtime;
}

/* Deletes the least recently used entries until the folder fits the
 * bound, and temp files left by processes that died while writing. */
static void evict(const char *dir, guint64 bound) {
  GDir *d = g_dir_open(dir, 0, NULL);
  if (!d) return;
  GArray *files = g_array_new(FALSE, FALSE, sizeof(CacheFile));
  guint64 total = 0;
  const gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  const char *name;
  while ((name = g_dir_read_name(d))) {
    char *path = g_build_filename(dir, name, NULL);
    GStatBuf st;
    const gboolean is_temp = g_str_has_prefix(name, ".tmp-");
    if ((!is_temp && !g_str_has_suffix(name, CACHE_SUFFIX)) || g_stat(path, &st) != 0) {
      g_free(path);
      continue;
    }
    if (is_temp) {
      if (now - st.st_mtime > STALE_TEMP_SECONDS) g_unlink(path);
      g_free(path);
      continue;
    }
    CacheFile f = {path, st.st_size, st.st_mtime};
    g_array_append_val(files, f);
    total += f.size;
  }
  g_dir_close(d);
  g_array_sort(files, compare_mtime);
  for (guint i = 0; i < files->len; i++) {
    CacheFile *f = &g_array_index(files, CacheFile, i);
    if (total > bound && g_unlink(f->path) == 0) total -= f->size;
    g_free(f->path);
  }
  g_array_free(files, TRUE);
}

static void write_job_free(WriteJob *job) {
  g_free(job->dir);
  g_free(job->path);
  g_free(job->key);
  g_byte_array_unref(job->index);
  g_array_unref(job->chunks);
  g_free(job);
}

static gpointer write_job_run(gpointer data) {
  WriteJob *job = data;
  const guint64 bound = max_bytes();
  char *temp = NULL;
  int fd = -1;
  if (job->file_size > bound) {
    g_debug("weight cache: %s would take %" G_GUINT64_FORMAT " MB, over the bound", job->path,
            job->file_size >> 20);
  } else if (g_mkdir_with_parents(job->dir, 0700) != 0) {
    g_debug("weight cache: cannot create %s: %s", job->dir, g_strerror(errno));
  } else {
    temp = g_build_filename(job->dir, ".tmp-XXXXXX", NULL);
    fd = g_mkstemp_full(temp, O_WRONLY | O_CLOEXEC, 0600);
  }
  if (fd >= 0) {
    gboolean ok = write_entry(job, fd);
    ok = close(fd) == 0 && ok;
    /* Free room first so that the bound holds with the new entry in. */
    if (ok) evict(job->dir, bound - job->file_size);
    if (!ok || g_rename(temp, job->path) != 0) {
      g_debug("weight cache: cannot write %s: %s", job->path, g_strerror(errno));
      g_unlink(temp);
    }
  }
  g_free(temp);
  write_job_free(job);
  return NULL;
}

void weight_cache_store(WeightCache *cache) {
  if (!cache || !cache->dirty) return;
  weight_cache_wait(cache);
  cache->dirty = FALSE; /* a failed write is not retried in this process */
  GPtrArray *names = g_hash_table_get_keys_as_ptr_array(cache->registered);
  g_ptr_array_sort(names, compare_strings);
  WriteJob *job = g_new0(WriteJob, 1);
  job->dir = g_strdup(cache->dir);
  job->path = g_strdup(cache->path);
  job->key = g_strdup(cache->key);
  job->chunks = g_array_new(FALSE, FALSE, sizeof(WriteChunk));
  job->index = build_index(cache, names, &job->file_size, job->chunks);
  g_ptr_array_unref(names);
  /* In the background: a UNet entry is gigabytes (seconds to write), and the
   * run that made it out of date, often a live preview at a new size, goes on
   * meanwhile. */
  cache->writer = g_thread_try_new("lcm-weight-cache", write_job_run, job, NULL);
  if (!cache->writer) write_job_run(job); /* no thread to spare: write now */
}
