/* safetensors reader (memory-mapped, fully validated) and streaming writer.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}},
 * then the data area; offsets are relative to the data area. */
#include "safetensors.h"

#include "lcm.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Real headers are a few hundred kB; anything this large is corrupt. */
#define ST_MAX_HEADER_BYTES ((guint64)100 * 1024 * 1024)

struct StFile {
  char *path;
  GMappedFile *mapping;
  StTensor *tensors; /* sorted by data offset */
  guint count;
  GHashTable *by_name;  /* name -> StTensor* */
  GHashTable *metadata; /* char* -> char* */
};

static const struct {
  const char *name;
  size_t size;
} dtype_info[] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4}, [ST_U8] = {"U8", 1},
};

const char *st_dtype_name(StDtype dtype) {
  return dtype_info[dtype].name;
}

size_t st_dtype_size(StDtype dtype) {
  return dtype_info[dtype].size;
}

static gboolean dtype_parse(const char *name, StDtype *out) {
  for (size_t i = 0; i < G_N_ELEMENTS(dtype_info); i++) {
    if (strcmp(name, dtype_info[i].name) == 0) {
      *out = (StDtype)i;
      return TRUE;
    }
  }
  return FALSE;
}

int64_t st_numel(const StTensor *tensor) {
  int64_t n = 1;
  for (int i = 0; i < tensor->ndims; i++) n *= tensor->shape[i];
  return n;
}

/* Element count of a shape, or -1 when a dim is negative or the byte size
 * (numel * itemsize) would not fit in int64. */
static int64_t checked_numel(int ndims, const int64_t *shape, size_t itemsize) {
  int64_t n = 1;
  for (int i = 0; i < ndims; i++) {
    if (shape[i] < 0) return -1;
    if (shape[i] != 0 && n > INT64_MAX / (int64_t)itemsize / shape[i]) return -1;
    n *= shape[i];
  }
  return n;
}

static char *shape_string(int ndims, const int64_t *shape) {
  GString *s = g_string_new("[");
  for (int i = 0; i < ndims; i++)
    g_string_append_printf(s, "%s%" G_GINT64_FORMAT, i ? ", " : "", shape[i]);
  g_string_append_c(s, ']');
  return g_string_free(s, FALSE);
}

/* ---- Reading -------------------------------------------------------------- */

static void tensor_clear(StTensor *tensor) {
  g_free(tensor->name);
}

void st_close(StFile *file) {
  if (!file) return;
  for (guint i = 0; i < file->count; i++) tensor_clear(&file->tensors[i]);
  g_free(file->tensors);
  if (file->by_name) g_hash_table_unref(file->by_name);
  if (file->metadata) g_hash_table_unref(file->metadata);
  if (file->mapping) g_mapped_file_unref(file->mapping);
  g_free(file->path);
  g_free(file);
}

static gboolean fail(GError **error, int code, const char *path, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

static gboolean fail(GError **error, int code, const char *path, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  char *what = g_strdup_vprintf(fmt, args);
  va_end(args);
  g_set_error(error, LCM_ERROR, code, "%s: %s", path, what);
  g_free(what);
  return FALSE;
}

static gboolean json_get_int64(JsonNode *node, int64_t *out) {
  if (!node || !JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_INT64)
    return FALSE;
  *out = json_node_get_int(node);
  return TRUE;
}

/* Fills everything but `data` from one header entry; `data_begin` and
 * `data_end` are the offsets relative to the data area. */
static gboolean parse_tensor_entry(const char *path, const char *name, JsonNode *node,
                                   guint64 data_size, StTensor *tensor, guint64 *data_begin,
                                   GError **error) {
  tensor->name = g_strdup(name);
  if (!JSON_NODE_HOLDS_OBJECT(node))
    return fail(error, LCM_ERROR_FORMAT, path, "tensor '%s': header entry is not an object", name);
  JsonObject *entry = json_node_get_object(node);

  JsonNode *dtype_node = json_object_get_member(entry, "dtype");
  if (!dtype_node || !JSON_NODE_HOLDS_VALUE(dtype_node) ||
      json_node_get_value_type(dtype_node) != G_TYPE_STRING)
    return fail(error, LCM_ERROR_FORMAT, path, "tensor '%s' has no dtype string", name);
  const char *dtype_name = json_node_get_string(dtype_node);
  if (!dtype_parse(dtype_name, &tensor->dtype))
    return fail(error, LCM_ERROR_UNSUPPORTED, path,
                "tensor '%s' has dtype %s, which is not supported (F32, F16, BF16, I64, I32, U8)",
                name, dtype_name);

  JsonNode *shape_node = json_object_get_member(entry, "shape");
  if (!shape_node || !JSON_NODE_HOLDS_ARRAY(shape_node))
    return fail(error, LCM_ERROR_FORMAT, path, "tensor '%s' has no shape list", name);
  JsonArray *shape = json_node_get_array(shape_node);
  guint ndims = json_array_get_length(shape);
  if (ndims > ST_MAX_DIMS)
    return fail(error, LCM_ERROR_FORMAT, path, "tensor '%s' has %u dims (at most %d supported)",
                name, ndims, ST_MAX_DIMS);
  tensor->ndims = (int)ndims;
  for (guint i = 0; i < ndims; i++) {
    if (!json_get_int64(json_array_get_element(shape, i), &tensor->shape[i]) ||
        tensor->shape[i] < 0)
      return fail(error, LCM_ERROR_FORMAT, path,
                  "tensor '%s': shape entry %u is not a non-negative integer", name, i);
  }
  size_t itemsize = st_dtype_size(tensor->dtype);
  int64_t numel = checked_numel(tensor->ndims, tensor->shape, itemsize);
  if (numel < 0) {
    char *s = shape_string(tensor->ndims, tensor->shape);
    fail(error, LCM_ERROR_FORMAT, path, "tensor '%s' has shape %s, whose size overflows", name, s);
    g_free(s);
    return FALSE;
  }

  JsonNode *offsets_node = json_object_get_member(entry, "data_offsets");
  int64_t begin, end;
  if (!offsets_node || !JSON_NODE_HOLDS_ARRAY(offsets_node) ||
      json_array_get_length(json_node_get_array(offsets_node)) != 2 ||
      !json_get_int64(json_array_get_element(json_node_get_array(offsets_node), 0), &begin) ||
      !json_get_int64(json_array_get_element(json_node_get_array(offsets_node), 1), &end))
    return fail(error, LCM_ERROR_FORMAT, path, "tensor '%s' has no [begin, end] data_offsets",
                name);
  if (begin < 0 || end < begin || (guint64)end > data_size)
    return fail(error, LCM_ERROR_FORMAT, path,
                "tensor '%s' has data offsets [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT
                "] outside the data area of %" G_GUINT64_FORMAT " bytes (file truncated?)",
                name, begin, end, data_size);
  tensor->nbytes = (size_t)(end - begin);
  if ((guint64)numel * itemsize != (guint64)tensor->nbytes) {
    char *s = shape_string(tensor->ndims, tensor->shape);
    fail(error, LCM_ERROR_FORMAT, path,
         "tensor '%s' has shape %s of %s (%" G_GUINT64_FORMAT " bytes) but spans %zu bytes", name,
         s, dtype_name, (guint64)numel * itemsize, tensor->nbytes);
    g_free(s);
    return FALSE;
  }
  *data_begin = (guint64)begin;
  return TRUE;
}

static gboolean parse_metadata(const char *path, JsonNode *node, GHashTable *metadata,
                               GError **error) {
  if (!JSON_NODE_HOLDS_OBJECT(node))
    return fail(error, LCM_ERROR_FORMAT, path, "__metadata__ is not an object");
  JsonObjectIter iter;
  const char *key;
  JsonNode *value;
  json_object_iter_init(&iter, json_node_get_object(node));
  while (json_object_iter_next(&iter, &key, &value)) {
    if (!JSON_NODE_HOLDS_VALUE(value) || json_node_get_value_type(value) != G_TYPE_STRING)
      return fail(error, LCM_ERROR_FORMAT, path, "__metadata__ value '%s' is not a string", key);
    g_hash_table_insert(metadata, g_strdup(key), g_strdup(json_node_get_string(value)));
  }
  return TRUE;
}

typedef struct {
  guint64 begin;
  guint index;
} TensorSpan;

static int span_compare(const void *a, const void *b) {
  const TensorSpan *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return (x->index > y->index) - (x->index < y->index);
}

/* Parses the header into file->tensors (sorted by offset) and checks that no
 * two tensors share bytes. */
static gboolean parse_header(StFile *file, const char *json, gsize json_len, const guint8 *data,
                             guint64 data_size, GError **error) {
  JsonParser *parser = json_parser_new();
  GError *json_error = NULL;
  gboolean ok = FALSE;
  TensorSpan *spans = NULL;
  StTensor *unsorted = NULL;
  guint n = 0;

  if (!json_parser_load_from_data(parser, json, (gssize)json_len, &json_error)) {
    fail(error, LCM_ERROR_FORMAT, file->path, "header is not valid JSON (%s)", json_error->message);
    g_error_free(json_error);
    goto out;
  }
  JsonNode *root = json_parser_get_root(parser);
  if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
    fail(error, LCM_ERROR_FORMAT, file->path, "header is not a JSON object");
    goto out;
  }
  JsonObject *object = json_node_get_object(root);
  guint members = json_object_get_size(object);
  unsorted = g_new0(StTensor, members);
  spans = g_new0(TensorSpan, members);

  JsonObjectIter iter;
  const char *name;
  JsonNode *node;
  json_object_iter_init(&iter, object);
  while (json_object_iter_next(&iter, &name, &node)) {
    if (strcmp(name, "__metadata__") == 0) {
      if (!parse_metadata(file->path, node, file->metadata, error)) goto out;
      continue;
    }
    spans[n].index = n;
    gboolean entry_ok =
        parse_tensor_entry(file->path, name, node, data_size, &unsorted[n], &spans[n].begin, error);
    n++; /* the entry's name is owned by `unsorted` from here on */
    if (!entry_ok) goto out;
  }

  /* In offset order, each non-empty tensor must start at or after the end
   * of every earlier one. */
  if (n > 1) qsort(spans, n, sizeof *spans, span_compare); /* spans is NULL for a "{}" header */
  const StTensor *furthest = NULL; /* the earlier tensor reaching furthest */
  guint64 furthest_end = 0;
  for (guint i = 0; i < n; i++) {
    const StTensor *cur = &unsorted[spans[i].index];
    if (cur->nbytes == 0) continue;
    if (furthest && spans[i].begin < furthest_end) {
      fail(error, LCM_ERROR_FORMAT, file->path,
           "tensors '%s' and '%s' overlap in the data area (the first ends at byte "
           "%" G_GUINT64_FORMAT ", the second starts at %" G_GUINT64_FORMAT ")",
           furthest->name, cur->name, furthest_end, spans[i].begin);
      goto out;
    }
    furthest = cur;
    furthest_end = spans[i].begin + cur->nbytes;
  }

  file->tensors = g_new0(StTensor, n);
  for (guint i = 0; i < n; i++) {
    file->tensors[i] = unsorted[spans[i].index];
    file->tensors[i].data = data + spans[i].begin;
    g_hash_table_insert(file->by_name, file->tensors[i].name, &file->tensors[i]);
  }
  file->count = n;
  n = 0; /* names moved to file->tensors */
  ok = TRUE;

out:
  for (guint i = 0; i < n; i++) tensor_clear(&unsorted[i]);
  g_free(unsorted);
  g_free(spans);
  g_object_unref(parser);
  return ok;
}

/* Pickle-based PyTorch files (.ckpt/.pt/.bin) are zip archives or raw
 * pickles; a safetensors header always starts with '{' at byte 8. */
static gboolean looks_like_pickle(const guint8 *bytes, gsize size) {
  if (size >= 9 && bytes[8] == '{') return FALSE;
  gboolean zip = size >= 4 && memcmp(bytes, "PK\x03\x04", 4) == 0;
  gboolean pickle = size >= 2 && bytes[0] == 0x80 && bytes[1] >= 2 && bytes[1] <= 5;
  return zip || pickle;
}

StFile *st_open(const char *path, GError **error) {
  GError *io_error = NULL;
  GMappedFile *mapping = g_mapped_file_new(path, FALSE, &io_error);
  if (!mapping) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: cannot open (%s)", path, io_error->message);
    g_error_free(io_error);
    return NULL;
  }
  StFile *file = g_new0(StFile, 1);
  file->path = g_strdup(path);
  file->mapping = mapping;
  file->by_name = g_hash_table_new(g_str_hash, g_str_equal);
  file->metadata = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

  const guint8 *bytes = (const guint8 *)g_mapped_file_get_contents(mapping);
  gsize size = g_mapped_file_get_length(mapping);
  if (looks_like_pickle(bytes, size)) {
    fail(error, LCM_ERROR_UNSUPPORTED, path,
         "is a PyTorch pickle/zip file, not safetensors (pickles can run arbitrary code, so "
         "they are not loaded); convert it to .safetensors");
    goto fail;
  }
  if (size < 8) {
    fail(error, LCM_ERROR_FORMAT, path, "file is truncated (%zu bytes, no header length)",
         (size_t)size);
    goto fail;
  }
  guint64 header_len = 0;
  for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | bytes[i];
  if (header_len > ST_MAX_HEADER_BYTES) {
    fail(error, LCM_ERROR_FORMAT, path,
         "header length %" G_GUINT64_FORMAT " is absurd (over 100 MB): not a safetensors file",
         header_len);
    goto fail;
  }
  if (header_len > size - 8) {
    fail(error, LCM_ERROR_FORMAT, path,
         "header length %" G_GUINT64_FORMAT " runs past the end of the %zu-byte file (truncated?)",
         header_len, (size_t)size);
    goto fail;
  }
  if (!parse_header(file, (const char *)bytes + 8, (gsize)header_len, bytes + 8 + header_len,
                    size - 8 - header_len, error))
    goto fail;
  return file;

fail:
  st_close(file);
  return NULL;
}

const char *st_path(const StFile *file) {
  return file->path;
}

guint st_count(const StFile *file) {
  return file->count;
}

const StTensor *st_tensor_at(const StFile *file, guint index) {
  return index < file->count ? &file->tensors[index] : NULL;
}

const StTensor *st_find(const StFile *file, const char *name) {
  return g_hash_table_lookup(file->by_name, name);
}

const char *st_metadata(const StFile *file, const char *key) {
  return g_hash_table_lookup(file->metadata, key);
}

/* ---- Conversion ----------------------------------------------------------- */

static float f32_from_bits(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static uint32_t f32_bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  return bits;
}

/* Branch-free so that the conversion loop vectorises: the half's exponent and
 * mantissa shifted into place read as a float 2^-112 times too small, exact
 * for subnormals too; all-ones exponents (inf, nan) are set apart. */
static float f16_to_f32(uint16_t h) {
  uint32_t magnitude = (uint32_t)(h & 0x7fffu) << 13;
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  float scaled = f32_from_bits(magnitude) * 0x1p112f;
  uint32_t special = 0u - (uint32_t)(magnitude >= (0x7c00u << 13)); /* all ones for inf/nan */
  uint32_t bits = (f32_bits(scaled) & ~special) | ((magnitude | 0x7f800000u) & special);
  return f32_from_bits(bits | sign);
}

void st_tensor_drop_pages(const StTensor *tensor) {
#ifdef MADV_DONTNEED
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t start = ((uintptr_t)tensor->data + page - 1) & ~(page - 1);
  uintptr_t end = ((uintptr_t)tensor->data + tensor->nbytes) & ~(page - 1);
  /* Whole pages inside the tensor only: its neighbours may still be read. */
  if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
#else
  (void)tensor;
#endif
}

void st_tensor_to_f32(const StTensor *tensor, float *dst) {
  const guint8 *src = tensor->data;
  size_t n = (size_t)st_numel(tensor);
  /* memcpy per element: the mapping gives no alignment guarantee */
  switch (tensor->dtype) {
  case ST_F32:
    memcpy(dst, src, n * sizeof(float));
    break;
  case ST_F16:
    /* Most of a model's load time is this conversion: use every core. */
#pragma omp parallel for schedule(static) if (n > (1u << 16))
    for (size_t i = 0; i < n; i++) {
      uint16_t h;
      memcpy(&h, src + 2 * i, 2);
      dst[i] = f16_to_f32(h);
    }
    break;
  case ST_BF16:
#pragma omp parallel for schedule(static) if (n > (1u << 16))
    for (size_t i = 0; i < n; i++) {
      uint16_t b;
      memcpy(&b, src + 2 * i, 2);
      dst[i] = f32_from_bits((uint32_t)b << 16);
    }
    break;
  case ST_I64:
    for (size_t i = 0; i < n; i++) {
      int64_t v;
      memcpy(&v, src + 8 * i, 8);
      dst[i] = (float)v;
    }
    break;
  case ST_I32:
    for (size_t i = 0; i < n; i++) {
      int32_t v;
      memcpy(&v, src + 4 * i, 4);
      dst[i] = (float)v;
    }
    break;
  case ST_U8:
    for (size_t i = 0; i < n; i++) dst[i] = (float)src[i];
    break;
  }
}

/* ---- Writing -------------------------------------------------------------- */

static gboolean check_write_tensor(const char *path, const StWriteTensor *t, GHashTable *seen,
                                   GError **error) {
  if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0)
    return fail(error, LCM_ERROR_INVALID, path, "tensor name '%s' is not allowed",
                t->name ? t->name : "(null)");
  if (!g_hash_table_add(seen, (gpointer)t->name))
    return fail(error, LCM_ERROR_INVALID, path, "tensor '%s' is given twice", t->name);
  if ((unsigned)t->dtype >= G_N_ELEMENTS(dtype_info))
    return fail(error, LCM_ERROR_INVALID, path, "tensor '%s' has an invalid dtype", t->name);
  if (t->ndims < 0 || t->ndims > ST_MAX_DIMS || (t->ndims > 0 && !t->shape))
    return fail(error, LCM_ERROR_INVALID, path, "tensor '%s' has %d dims", t->name, t->ndims);
  int64_t numel = checked_numel(t->ndims, t->shape, st_dtype_size(t->dtype));
  if (numel < 0)
    return fail(error, LCM_ERROR_INVALID, path, "tensor '%s' has a negative or overflowing shape",
                t->name);
  if (numel > 0 && !t->data)
    return fail(error, LCM_ERROR_INVALID, path, "tensor '%s' has no data", t->name);
  return TRUE;
}

static size_t write_tensor_bytes(const StWriteTensor *t) {
  return (size_t)checked_numel(t->ndims, t->shape, st_dtype_size(t->dtype)) *
         st_dtype_size(t->dtype);
}

/* The JSON header, padded with spaces to a multiple of 8 bytes so the data
 * area starts aligned. */
static char *build_header(const StWriteTensor *tensors, guint count, GHashTable *metadata,
                          gsize *length) {
  JsonBuilder *builder = json_builder_new();
  json_builder_begin_object(builder);
  if (metadata && g_hash_table_size(metadata) > 0) {
    json_builder_set_member_name(builder, "__metadata__");
    json_builder_begin_object(builder);
    GHashTableIter iter;
    gpointer key, value;
    g_hash_table_iter_init(&iter, metadata);
    while (g_hash_table_iter_next(&iter, &key, &value)) {
      json_builder_set_member_name(builder, key);
      json_builder_add_string_value(builder, value);
    }
    json_builder_end_object(builder);
  }
  guint64 offset = 0;
  for (guint i = 0; i < count; i++) {
    const StWriteTensor *t = &tensors[i];
    json_builder_set_member_name(builder, t->name);
    json_builder_begin_object(builder);
    json_builder_set_member_name(builder, "dtype");
    json_builder_add_string_value(builder, st_dtype_name(t->dtype));
    json_builder_set_member_name(builder, "shape");
    json_builder_begin_array(builder);
    for (int d = 0; d < t->ndims; d++) json_builder_add_int_value(builder, t->shape[d]);
    json_builder_end_array(builder);
    json_builder_set_member_name(builder, "data_offsets");
    json_builder_begin_array(builder);
    json_builder_add_int_value(builder, (gint64)offset);
    offset += write_tensor_bytes(t);
    json_builder_add_int_value(builder, (gint64)offset);
    json_builder_end_array(builder);
    json_builder_end_object(builder);
  }
  json_builder_end_object(builder);

  JsonGenerator *generator = json_generator_new();
  JsonNode *root = json_builder_get_root(builder);
  json_generator_set_root(generator, root);
  gsize json_len;
  char *json = json_generator_to_data(generator, &json_len);
  json_node_unref(root);
  g_object_unref(generator);
  g_object_unref(builder);

  GString *header = g_string_new_len(json, (gssize)json_len);
  g_free(json);
  while (header->len % 8 != 0) g_string_append_c(header, ' ');
  *length = header->len;
  return g_string_free(header, FALSE);
}

static gboolean write_all(FILE *out, const void *data, size_t n) {
  return n == 0 || fwrite(data, 1, n, out) == n;
}

gboolean st_write(const char *path, const StWriteTensor *tensors, guint count, GHashTable *metadata,
                  GError **error) {
  GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
  gboolean valid = TRUE;
  for (guint i = 0; i < count && valid; i++)
    valid = check_write_tensor(path, &tensors[i], seen, error);
  g_hash_table_unref(seen);
  if (!valid) return FALSE;

  gsize header_len;
  char *header = build_header(tensors, count, metadata, &header_len);
  char *tmp_path = g_strconcat(path, ".partial", NULL);
  gboolean ok = FALSE;
  FILE *out = fopen(tmp_path, "wb");
  if (!out) {
    fail(error, LCM_ERROR_IO, path, "cannot create (%s)", g_strerror(errno));
    goto out;
  }
  guint8 length_bytes[8];
  for (int i = 0; i < 8; i++) length_bytes[i] = (guint8)((guint64)header_len >> (8 * i));
  gboolean written = write_all(out, length_bytes, 8) && write_all(out, header, header_len);
  for (guint i = 0; i < count && written; i++)
    written = write_all(out, tensors[i].data, write_tensor_bytes(&tensors[i]));
  int saved_errno = errno;
  if (fclose(out) != 0 && written) {
    written = FALSE;
    saved_errno = errno;
  }
  if (!written) {
    fail(error, LCM_ERROR_IO, path, "write failed (%s)", g_strerror(saved_errno));
    g_unlink(tmp_path);
    goto out;
  }
  if (g_rename(tmp_path, path) != 0) {
    fail(error, LCM_ERROR_IO, path, "cannot replace (%s)", g_strerror(errno));
    g_unlink(tmp_path);
    goto out;
  }
  ok = TRUE;
out:
  g_free(tmp_path);
  g_free(header);
  return ok;
}
