/* safetensors files: a validated, memory-mapped reader and a writer. */
#pragma once

#include <glib.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

/* U8 holds images (e.g. the goldens' image_u8_hwc tensors). */
typedef enum { ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_U8 } StDtype;

typedef struct {
  char *name;
  StDtype dtype;
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  const void *data; /* points into the mapping; not necessarily aligned */
  size_t nbytes;
} StTensor;

typedef struct StFile StFile;

/* Maps and validates the whole header: bounded header length, JSON, dtypes,
 * shapes x itemsize = byte span, offsets inside the file, no overlaps. */
StFile *st_open(const char *path, GError **error);
void st_close(StFile *file);
const char *st_path(const StFile *file);
guint st_count(const StFile *file);
const StTensor *st_tensor_at(const StFile *file, guint index); /* in file order */
const StTensor *st_find(const StFile *file, const char *name);
/* __metadata__ value, or NULL. */
const char *st_metadata(const StFile *file, const char *key);

int64_t st_numel(const StTensor *tensor);
const char *st_dtype_name(StDtype dtype);
size_t st_dtype_size(StDtype dtype);
/* Converts any float or integer dtype to fp32 (dst holds st_numel floats). */
void st_tensor_to_f32(const StTensor *tensor, float *dst);
/* Drops the tensor's pages from this process's mapping (they stay in the
 * page cache; a later read maps them again): loaders call it once a tensor
 * is converted, so a loaded model is not counted twice in resident memory. */
void st_tensor_drop_pages(const StTensor *tensor);

/* Writing: tensors are given as fp32 or int data and stored with `dtype`. */
typedef struct {
  const char *name;
  StDtype dtype;
  int ndims;
  const int64_t *shape;
  const void *data; /* already in `dtype` */
} StWriteTensor;

/* Streams each tensor's data straight from the caller's buffer into a
 * temporary file that replaces `path` only once complete. */
gboolean st_write(const char *path, const StWriteTensor *tensors, guint count,
                  GHashTable *metadata /* char* -> char*, may be NULL */, GError **error);
