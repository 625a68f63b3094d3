/* safetensors reader/writer: round trips, dtype conversion, and refusal of
 * every kind of malformed file with a message naming file and problem. */
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <glib/gstdio.h>
#include <math.h>
#include <string.h>

static char *tmp_dir;

static char *tmp_path(const char *name) {
  return g_build_filename(tmp_dir, name, NULL);
}

static void test_round_trip(void) {
  const float f32[6] = {1.5f, -2.0f, 0.0f, 1e-30f, 3.25f, -0.0f};
  const uint16_t f16[4] = {0x3c00, 0xc000, 0x0001, 0x7bff}; /* 1, -2, 2^-24, 65504 */
  const uint16_t bf16[3] = {0x3f80, 0xc040, 0x0000};        /* 1, -3, 0 */
  const int64_t i64[3] = {-5, (int64_t)1 << 40, 7};
  const int32_t i32[2] = {-123456, 42};
  const uint8_t u8[3] = {0, 128, 255};
  const int64_t shape_f32[2] = {2, 3}, shape_f16[1] = {4}, shape_bf16[3] = {1, 3, 1},
                shape_i64[1] = {3}, shape_i32[2] = {2, 1}, shape_u8[1] = {3},
                shape_empty[2] = {0, 5};
  const StWriteTensor tensors[] = {
      {"weight.f32", ST_F32, 2, shape_f32, f32}, {"b.f16", ST_F16, 1, shape_f16, f16},
      {"c.bf16", ST_BF16, 3, shape_bf16, bf16},  {"ids \"quoted\"", ST_I64, 1, shape_i64, i64},
      {"d.i32", ST_I32, 2, shape_i32, i32},      {"scalar", ST_F32, 0, NULL, f32 + 4},
      {"empty", ST_F32, 2, shape_empty, NULL},   {"pixels.u8", ST_U8, 1, shape_u8, u8},
  };
  GHashTable *metadata = g_hash_table_new(g_str_hash, g_str_equal);
  g_hash_table_insert(metadata, "format", "pt");
  char *path = tmp_path("round-trip.safetensors");
  GError *error = NULL;
  g_assert_true(st_write(path, tensors, G_N_ELEMENTS(tensors), metadata, &error));
  g_assert_no_error(error);
  g_hash_table_unref(metadata);

  StFile *file = st_open(path, &error);
  g_assert_no_error(error);
  g_assert_nonnull(file);
  g_assert_cmpuint(st_count(file), ==, G_N_ELEMENTS(tensors));
  g_assert_cmpstr(st_metadata(file, "format"), ==, "pt");
  g_assert_null(st_metadata(file, "absent"));
  g_assert_null(st_find(file, "absent"));
  /* file order is data order, which is the write order */
  for (guint i = 0; i < G_N_ELEMENTS(tensors); i++) {
    const StTensor *t = st_tensor_at(file, i);
    const StWriteTensor *w = &tensors[i];
    g_assert_cmpstr(t->name, ==, w->name);
    g_assert_true(st_find(file, w->name) == t);
    g_assert_cmpint(t->dtype, ==, w->dtype);
    g_assert_cmpint(t->ndims, ==, w->ndims);
    for (int d = 0; d < w->ndims; d++) g_assert_cmpint(t->shape[d], ==, w->shape[d]);
    g_assert_cmpuint(t->nbytes, ==, (size_t)st_numel(t) * st_dtype_size(t->dtype));
    if (t->nbytes) g_assert_cmpmem(t->data, t->nbytes, w->data, t->nbytes);
  }
  g_assert_null(st_tensor_at(file, G_N_ELEMENTS(tensors)));

  float out[6];
  st_tensor_to_f32(st_find(file, "weight.f32"), out);
  g_assert_cmpmem(out, sizeof f32, f32, sizeof f32);
  st_tensor_to_f32(st_find(file, "b.f16"), out);
  g_assert_cmpfloat(out[0], ==, 1.0f);
  g_assert_cmpfloat(out[1], ==, -2.0f);
  g_assert_cmpfloat(out[2], ==, 0x1p-24f);
  g_assert_cmpfloat(out[3], ==, 65504.0f);
  st_tensor_to_f32(st_find(file, "c.bf16"), out);
  g_assert_cmpfloat(out[0], ==, 1.0f);
  g_assert_cmpfloat(out[1], ==, -3.0f);
  g_assert_cmpfloat(out[2], ==, 0.0f);
  st_tensor_to_f32(st_find(file, "ids \"quoted\""), out);
  g_assert_cmpfloat(out[0], ==, -5.0f);
  g_assert_cmpfloat(out[1], ==, 0x1p40f);
  st_tensor_to_f32(st_find(file, "d.i32"), out);
  g_assert_cmpfloat(out[0], ==, -123456.0f);
  g_assert_cmpfloat(out[1], ==, 42.0f);
  g_assert_cmpint(st_numel(st_find(file, "scalar")), ==, 1);
  st_tensor_to_f32(st_find(file, "scalar"), out);
  g_assert_cmpfloat(out[0], ==, 3.25f);
  g_assert_cmpint(st_numel(st_find(file, "empty")), ==, 0);
  st_tensor_to_f32(st_find(file, "pixels.u8"), out);
  g_assert_cmpfloat(out[0], ==, 0.0f);
  g_assert_cmpfloat(out[1], ==, 128.0f);
  g_assert_cmpfloat(out[2], ==, 255.0f);
  st_close(file);
  g_unlink(path);
  g_free(path);
}

/* Every fp16 class: zeros, subnormals, normals, extremes, inf, nan. */
static void test_f16_conversion(void) {
  static const struct {
    uint16_t bits;
    float value;
  } cases[] = {
      {0x0000, 0.0f},
      {0x8000, -0.0f},
      {0x0001, 0x1p-24f},
      {0x8001, -0x1p-24f},
      {0x03ff, 1023 * 0x1p-24f},
      {0x0200, 0x1p-15f},
      {0x0400, 0x1p-14f},
      {0x3c00, 1.0f},
      {0x3555, 0x1.554p-2f},
      {0xc000, -2.0f},
      {0x7bff, 65504.0f},
      {0xfbff, -65504.0f},
      {0x7c00, INFINITY},
      {0xfc00, -INFINITY},
  };
  uint16_t bits[G_N_ELEMENTS(cases) + 1];
  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) bits[i] = cases[i].bits;
  bits[G_N_ELEMENTS(cases)] = 0x7e00; /* nan */
  StTensor tensor = {.dtype = ST_F16, .ndims = 1, .shape = {G_N_ELEMENTS(bits)}, .data = bits};
  float out[G_N_ELEMENTS(bits)];
  st_tensor_to_f32(&tensor, out);
  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_assert_cmpfloat(out[i], ==, cases[i].value);
    g_assert_cmpint(signbit(out[i]) != 0, ==, signbit(cases[i].value) != 0);
  }
  g_assert_true(isnan(out[G_N_ELEMENTS(cases)]));

  uint16_t bf16[] = {0x7f80, 0xff80, 0x0001, 0x4049};
  StTensor bf = {.dtype = ST_BF16, .ndims = 1, .shape = {4}, .data = bf16};
  float bf_out[4];
  st_tensor_to_f32(&bf, bf_out);
  g_assert_cmpfloat(bf_out[0], ==, INFINITY);
  g_assert_cmpfloat(bf_out[1], ==, -INFINITY);
  g_assert_cmpfloat(bf_out[2], ==, 0x1p-133f);
  g_assert_cmpfloat(bf_out[3], ==, 3.140625f);
}

/* Every one of the 65536 halves, twice over so that the parallel
 * (large-tensor) path runs, against the definition: (-1)^s * 2^(e-15) * (1 + m/1024), or m * 2^-24
 * for e = 0. */
static void test_f16_all_values(void) {
  const guint count = 2 * 65536;
  uint16_t *bits = g_new(uint16_t, count);
  for (guint i = 0; i < count; i++) bits[i] = (uint16_t)i;
  StTensor tensor = {.dtype = ST_F16, .ndims = 1, .shape = {count}, .data = bits};
  float *out = g_new(float, count);
  st_tensor_to_f32(&tensor, out);
  for (guint n = 0; n < count; n++) {
    guint i = n & 0xffff;
    int exponent = (i >> 10) & 0x1f, mantissa = i & 0x3ff;
    float magnitude = exponent == 0 ? ldexpf((float)mantissa, -24)
                                    : ldexpf(1.0f + mantissa / 1024.0f, exponent - 15);
    float expected = (i & 0x8000) ? -magnitude : magnitude;
    if (exponent == 0x1f)
      g_assert_true(mantissa ? isnan(out[n]) : out[n] == expected * INFINITY);
    else
      g_assert_cmpfloat(out[n], ==, expected);
    g_assert_cmpint(signbit(out[n]) != 0, ==, (i & 0x8000) != 0);
  }
  g_free(bits);
  g_free(out);
}

/* Writes: u64 header length (`declared_len`, or the JSON's own when 0),
 * the JSON, then `data_len` zero bytes. */
static char *write_raw(const char *name, guint64 declared_len, const char *json, size_t data_len) {
  GByteArray *bytes = g_byte_array_new();
  guint64 len = declared_len ? declared_len : strlen(json);
  for (int i = 0; i < 8; i++) {
    guint8 b = (guint8)(len >> (8 * i));
    g_byte_array_append(bytes, &b, 1);
  }
  g_byte_array_append(bytes, (const guint8 *)json, (guint)strlen(json));
  guint8 zero = 0;
  for (size_t i = 0; i < data_len; i++) g_byte_array_append(bytes, &zero, 1);
  char *path = tmp_path(name);
  g_assert_true(g_file_set_contents(path, (const char *)bytes->data, bytes->len, NULL));
  g_byte_array_unref(bytes);
  return path;
}

/* st_open must fail with `code` and a message holding the file name and
 * every one of the NULL-terminated substrings. */
static void expect_open_error(const char *path, int code, ...) {
  GError *error = NULL;
  StFile *file = st_open(path, &error);
  g_assert_null(file);
  va_list parts;
  va_start(parts, code);
  test_expect_error_valist(error, code, parts);
  va_end(parts);
  g_assert_nonnull(strstr(error->message, path));
  g_error_free(error);
}

static void test_malformed(void) {
  static const struct {
    const char *name;
    guint64 declared_len;
    const char *json;
    size_t data_len;
    int code;
    const char *expect1, *expect2;
  } cases[] = {
      {"header-past-end.safetensors", 1000, "{}", 10, LCM_ERROR_FORMAT, "header length 1000",
       "past the end"},
      {"header-absurd.safetensors", (guint64)1 << 40, "{}", 10, LCM_ERROR_FORMAT, "header length",
       "absurd"},
      {"bad-json.safetensors", 0, "{\"a\": {\"dtype\": ", 0, LCM_ERROR_FORMAT, "not valid JSON",
       NULL},
      {"not-object.safetensors", 0, "[1, 2]", 0, LCM_ERROR_FORMAT, "not a JSON object", NULL},
      {"offsets-outside.safetensors", 0,
       "{\"w\": {\"dtype\": \"F32\", \"shape\": [100], \"data_offsets\": [0, 400]}}", 16,
       LCM_ERROR_FORMAT, "tensor 'w'", "outside the data area"},
      {"negative-offset.safetensors", 0,
       "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 16,
       LCM_ERROR_FORMAT, "tensor 'w'", "outside the data area"},
      {"overlap.safetensors", 0,
       "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
       " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
       24, LCM_ERROR_FORMAT, "'a' and 'b'", "overlap"},
      {"unknown-dtype.safetensors", 0,
       "{\"w\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8,
       LCM_ERROR_UNSUPPORTED, "tensor 'w'", "dtype F64"},
      {"dtype-not-string.safetensors", 0,
       "{\"w\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, LCM_ERROR_FORMAT,
       "tensor 'w'", "no dtype"},
      {"span-mismatch.safetensors", 0,
       "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 12]}}", 16,
       LCM_ERROR_FORMAT, "tensor 'w' has shape [2, 2] of F32 (16 bytes)", "spans 12 bytes"},
      {"negative-dim.safetensors", 0,
       "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1, 4], \"data_offsets\": [0, 0]}}", 0,
       LCM_ERROR_FORMAT, "tensor 'w'", "non-negative"},
      {"overflow.safetensors", 0,
       "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, "
       "0]}}",
       0, LCM_ERROR_FORMAT, "tensor 'w'", "overflows"},
      {"bad-metadata.safetensors", 0, "{\"__metadata__\": {\"n\": 3}}", 0, LCM_ERROR_FORMAT,
       "__metadata__", "'n'"},
      {"no-offsets.safetensors", 0, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4,
       LCM_ERROR_FORMAT, "tensor 'w'", "data_offsets"},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
    char *path = write_raw(cases[i].name, cases[i].declared_len, cases[i].json, cases[i].data_len);
    expect_open_error(path, cases[i].code, cases[i].expect1, cases[i].expect2, NULL);
    g_unlink(path);
    g_free(path);
  }
}

static void test_truncated_and_foreign(void) {
  char *empty = tmp_path("empty.safetensors");
  g_assert_true(g_file_set_contents(empty, "", 0, NULL));
  expect_open_error(empty, LCM_ERROR_FORMAT, "truncated", NULL);

  char *short_file = tmp_path("truncated.safetensors");
  g_assert_true(g_file_set_contents(short_file, "\x10\x00\x00", 3, NULL));
  expect_open_error(short_file, LCM_ERROR_FORMAT, "truncated", NULL);

  /* a valid file cut short in its data area */
  char *cut =
      write_raw("cut.safetensors", 0,
                "{\"w\": {\"dtype\": \"F16\", \"shape\": [8], \"data_offsets\": [0, 16]}}", 10);
  expect_open_error(cut, LCM_ERROR_FORMAT, "tensor 'w'", "truncated", NULL);

  char *zip = tmp_path("really-a-zip.safetensors");
  g_assert_true(g_file_set_contents(zip, "PK\x03\x04\x14\x00\x00\x00\x08\x00rest", 14, NULL));
  expect_open_error(zip, LCM_ERROR_UNSUPPORTED, "pickle", "convert it to .safetensors", NULL);

  char *pickle = tmp_path("really-a-pickle.safetensors");
  g_assert_true(g_file_set_contents(pickle, "\x80\x02}q\x00(X\x05\x00\x00\x00state", 16, NULL));
  expect_open_error(pickle, LCM_ERROR_UNSUPPORTED, "convert it to .safetensors", NULL);

  char *absent = tmp_path("absent.safetensors");
  expect_open_error(absent, LCM_ERROR_IO, "cannot open", NULL);

  for (char **p = (char *[]){empty, short_file, cut, zip, pickle, absent, NULL}; *p; p++) {
    g_unlink(*p);
    g_free(*p);
  }
}

/* A header length starting 0x80 0x02 (a pickle protocol-2 opening) must not be taken for a pickle.
 */
static void test_pickle_lookalike_header(void) {
  GString *json =
      g_string_new("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}");
  while (json->len != 0x280) g_string_append_c(json, ' ');
  char *path = write_raw("lookalike.safetensors", 0, json->str, 4);
  GError *error = NULL;
  StFile *file = st_open(path, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(st_count(file), ==, 1);
  st_close(file);
  g_unlink(path);
  g_free(path);
  g_string_free(json, TRUE);
}

/* Found by fuzz-safetensors: "{}" (no tensors at all) sorted a NULL array;
 * such a file is valid and empty, with or without metadata. */
static void test_empty_header(void) {
  const char *headers[] = {"{}", "{\"__metadata__\":{\"format\":\"pt\"}}"};
  for (size_t i = 0; i < G_N_ELEMENTS(headers); i++) {
    char *path = write_raw("empty.safetensors", 0, headers[i], 0);
    GError *error = NULL;
    StFile *file = st_open(path, &error);
    g_assert_no_error(error);
    g_assert_cmpuint(st_count(file), ==, 0);
    g_assert_null(st_tensor_at(file, 0));
    g_assert_cmpstr(st_metadata(file, "format"), ==, i == 0 ? NULL : "pt");
    st_close(file);
    g_free(path);
  }
}

static void test_write_rejects_bad_input(void) {
  const float data[2] = {1, 2};
  const int64_t shape[1] = {2}, negative[1] = {-2};
  char *path = tmp_path("bad-write.safetensors");
  GError *error = NULL;
  const StWriteTensor duplicate[] = {{"x", ST_F32, 1, shape, data}, {"x", ST_F32, 1, shape, data}};
  g_assert_false(st_write(path, duplicate, 2, NULL, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_assert_nonnull(strstr(error->message, "'x' is given twice"));
  g_clear_error(&error);
  const StWriteTensor bad_shape[] = {{"y", ST_F32, 1, negative, data}};
  g_assert_false(st_write(path, bad_shape, 1, NULL, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  const StWriteTensor reserved[] = {{"__metadata__", ST_F32, 1, shape, data}};
  g_assert_false(st_write(path, reserved, 1, NULL, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));

  char *unwritable = g_build_filename(tmp_dir, "no-such-dir", "x.safetensors", NULL);
  const StWriteTensor ok[] = {{"z", ST_F32, 1, shape, data}};
  g_assert_false(st_write(unwritable, ok, 1, NULL, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_IO);
  g_assert_nonnull(strstr(error->message, unwritable));
  g_clear_error(&error);
  g_free(unwritable);
  g_free(path);
}

/* The golden checkpoint is a real-world file: 791 fp16 tensors. */
static void test_reads_golden_checkpoint(void) {
  char *path = test_data_path("golden/tiny-lcm.safetensors");
  GError *error = NULL;
  StFile *file = st_open(path, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(st_count(file), ==, 791);
  const StTensor *t = st_find(file, "model.diffusion_model.input_blocks.0.0.weight");
  g_assert_nonnull(t);
  g_assert_cmpint(t->dtype, ==, ST_F16);
  g_assert_cmpint(t->ndims, ==, 4);
  g_assert_cmpint(t->shape[0], ==, 32);
  g_assert_cmpint(t->shape[1], ==, 4);
  st_close(file);
  g_free(path);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  tmp_dir = g_dir_make_tmp("test-safetensors-XXXXXX", NULL);
  g_assert_nonnull(tmp_dir);
  g_test_add_func("/safetensors/round-trip", test_round_trip);
  g_test_add_func("/safetensors/f16-bf16-conversion", test_f16_conversion);
  g_test_add_func("/safetensors/f16-all-values", test_f16_all_values);
  g_test_add_func("/safetensors/malformed", test_malformed);
  g_test_add_func("/safetensors/truncated-and-foreign", test_truncated_and_foreign);
  g_test_add_func("/safetensors/pickle-lookalike-header", test_pickle_lookalike_header);
  g_test_add_func("/safetensors/empty-header", test_empty_header);
  g_test_add_func("/safetensors/write-rejects-bad-input", test_write_rejects_bad_input);
  g_test_add_func("/safetensors/golden-checkpoint", test_reads_golden_checkpoint);
  int result = g_test_run();
  g_rmdir(tmp_dir);
  g_free(tmp_dir);
  return result;
}
