/* The packed-weight cache (core/weight-cache.c) through the public API: a
 * run whose layers came from the cache equals a fresh load's bit for bit
 * (fp32, bf16 where the CPU has it, with a LoRA); a changed model file, LoRA
 * scale or precision makes a new entry; truncated, corrupted and wrong-magic
 * entries are rebuilt without a crash; eviction keeps the size bound;
 * switched off, nothing is written; derived layers (folded upsampling,
 * the token table) never touch the model file on a hit. Each test uses a copy of tiny-lcm and a
 * cache folder of its own. */
#include "lcm.h"
#include "testutil.h"

#include <fcntl.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <utime.h>

#define SIDE 64
#define HEADER_SIZE 64 /* FileHeader in core/weight-cache.c */

typedef struct {
  char *root;  /* temp folder holding both */
  char *model; /* a copy of tiny-lcm */
  char *cache; /* the cache folder */
} Fixture;

static void copy_tree(const char *from, const char *to) {
  g_assert_cmpint(g_mkdir_with_parents(to, 0700), ==, 0);
  GDir *dir = g_dir_open(from, 0, NULL);
  g_assert_nonnull(dir);
  const char *name;
  while ((name = g_dir_read_name(dir))) {
    g_autofree char *src = g_build_filename(from, name, NULL);
    g_autofree char *dst = g_build_filename(to, name, NULL);
    if (g_file_test(src, G_FILE_TEST_IS_DIR)) {
      copy_tree(src, dst);
    } else {
      g_autofree char *data = NULL;
      gsize size = 0;
      g_assert_true(g_file_get_contents(src, &data, &size, NULL));
      g_assert_true(g_file_set_contents(dst, data, size, NULL));
    }
  }
  g_dir_close(dir);
}

static void fixture_setup(Fixture *f, gconstpointer data) {
  (void)data;
  f->root = g_dir_make_tmp("weight-cache-XXXXXX", NULL);
  g_assert_nonnull(f->root);
  g_autofree char *tiny = test_golden_path("tiny-lcm");
  f->model = g_build_filename(f->root, "model", NULL);
  copy_tree(tiny, f->model);
  f->cache = g_build_filename(f->root, "cache", NULL);
  g_setenv("GIMP_LCM_WEIGHT_CACHE", f->cache, TRUE);
  g_unsetenv("GIMP_LCM_WEIGHT_CACHE_MAX_MB");
}

static void fixture_teardown(Fixture *f, gconstpointer data) {
  (void)data;
  test_remove_tree(f->root);
  g_free(f->root);
  g_free(f->model);
  g_free(f->cache);
}

/* The txt2img images of the fixture's model at each of `sides` (square), one
 * pipeline for all (with a LoRA at `lora_scale` when > 0); FALSE (test
 * skipped) when the CPU cannot run `precision`. */
static gboolean run_sides(const Fixture *f, LcmPrecision precision, double lora_scale,
                          const int *sides, int n_sides, LcmImage **images) {
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open(f->model, &error);
  g_assert_no_error(error);
  if (lora_scale > 0) {
    g_autofree char *lora = test_golden_path("lora/lora_a_kohya.safetensors");
    g_assert_true(lcm_model_add_lora(model, lora, lora_scale, &error));
  }
  LcmPipeline *p = lcm_pipeline_new(model, precision, &error);
  if (test_skip_if_unsupported(error, precision)) {
    lcm_model_free(model);
    return FALSE;
  }
  g_assert_no_error(error);
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  params.prompt = "a cached cat";
  params.seed = 7;
  for (int i = 0; i < n_sides; i++) {
    params.width = params.height = sides[i];
    images[i] = lcm_pipeline_run(p, &params, &error);
    g_assert_no_error(error);
  }
  lcm_pipeline_free(p);
  lcm_model_free(model);
  return TRUE;
}

/* The 64x64 image; NULL (test skipped) when the CPU cannot run `precision`. */
static LcmImage *run(const Fixture *f, LcmPrecision precision, double lora_scale) {
  const int side = SIDE;
  LcmImage *image = NULL;
  return run_sides(f, precision, lora_scale, &side, 1, &image) ? image : NULL;
}

/* The same run with the cache off: the reference. */
static LcmImage *run_uncached(const Fixture *f, LcmPrecision precision, double lora_scale) {
  g_setenv("GIMP_LCM_WEIGHT_CACHE", "off", TRUE);
  LcmImage *image = run(f, precision, lora_scale);
  g_setenv("GIMP_LCM_WEIGHT_CACHE", f->cache, TRUE);
  return image;
}

static void assert_same_image(const LcmImage *a, const LcmImage *b) {
  g_assert_cmpint(a->width, ==, b->width);
  g_assert_cmpint(a->height, ==, b->height);
  g_assert_cmpint(a->channels, ==, b->channels);
  g_assert_cmpmem(a->data, (gsize)a->width * a->height * a->channels * sizeof(float), b->data,
                  (gsize)b->width * b->height * b->channels * sizeof(float));
}

/* The cache's entry files whose names start with `network` ("" = all),
 * sorted. */
static GPtrArray *entries(const Fixture *f, const char *network) {
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  GDir *dir = g_dir_open(f->cache, 0, NULL);
  const char *name;
  while (dir && (name = g_dir_read_name(dir)))
    if (g_str_has_prefix(name, network) && g_str_has_suffix(name, ".lcmw"))
      g_ptr_array_add(names, g_build_filename(f->cache, name, NULL));
  if (dir) g_dir_close(dir);
  g_ptr_array_sort(names, (GCompareFunc)g_strcmp0);
  return names;
}

/* The only entry of `network`. */
static char *only_entry(const Fixture *f, const char *network) {
  g_autoptr(GPtrArray) names = entries(f, network);
  g_assert_cmpuint(names->len, ==, 1);
  return g_strdup(names->pdata[0]);
}

static ino_t inode_of(const char *path) {
  struct stat st;
  g_assert_cmpint(stat(path, &st), ==, 0);
  return st.st_ino;
}

static void test_hit_equals_fresh(Fixture *f, gconstpointer data) {
  const LcmPrecision precision = GPOINTER_TO_INT(data);
  g_autoptr(GPtrArray) before = entries(f, "");
  g_assert_cmpuint(before->len, ==, 0);
  LcmImage *fresh = run_uncached(f, precision, 0);
  if (!fresh) return;
  LcmImage *first = run(f, precision, 0); /* fills the cache */
  g_autofree char *unet = only_entry(f, "unet-");
  g_autofree char *vae = only_entry(f, "vae-");
  g_autofree char *text = only_entry(f, "text-encoder-");
  const ino_t unet_inode = inode_of(unet);
  LcmImage *hit = run(f, precision, 0);
  /* Read, not rewritten: the layouts the run wanted were all in it. */
  g_assert_cmpuint(inode_of(unet), ==, unet_inode);
  assert_same_image(fresh, first);
  assert_same_image(fresh, hit);
  lcm_image_free(fresh);
  lcm_image_free(first);
  lcm_image_free(hit);
}

/* Overwrites, in every .safetensors file of the model's `component` folder,
 * the data of each tensor whose name contains `needle`, keeping the file's
 * size, inode and modification time: the cache key cannot tell. */
static int scribble(const Fixture *f, const char *component, const char *needle) {
  g_autofree char *folder = g_build_filename(f->model, component, NULL);
  GDir *dir = g_dir_open(folder, 0, NULL);
  g_assert_nonnull(dir);
  int scribbled = 0;
  const char *name;
  while ((name = g_dir_read_name(dir))) {
    if (!g_str_has_suffix(name, ".safetensors")) continue;
    g_autofree char *path = g_build_filename(folder, name, NULL);
    struct stat before;
    g_assert_cmpint(stat(path, &before), ==, 0);
    g_autofree char *data = NULL;
    gsize size = 0;
    g_assert_true(g_file_get_contents(path, &data, &size, NULL));
    guint64 header_size;
    memcpy(&header_size, data, sizeof header_size);
    g_autoptr(JsonParser) parser = json_parser_new();
    g_assert_true(json_parser_load_from_data(parser, data + 8, (gssize)header_size, NULL));
    JsonObject *header = json_node_get_object(json_parser_get_root(parser));
    g_autoptr(GList) names = json_object_get_members(header);
    FILE *file = fopen(path, "r+b");
    g_assert_nonnull(file);
    for (GList *l = names; l; l = l->next) {
      if (!strstr(l->data, needle)) continue;
      JsonArray *offsets = json_object_get_array_member(
          json_object_get_object_member(header, l->data), "data_offsets");
      const gint64 begin = json_array_get_int_element(offsets, 0);
      const gint64 end = json_array_get_int_element(offsets, 1);
      g_autofree char *junk = g_malloc((gsize)(end - begin));
      memset(junk, 0x3c, (gsize)(end - begin)); /* 1.15 in fp16, 0.0115 in fp32 */
      g_assert_cmpint(fseek(file, (long)(8 + header_size + begin), SEEK_SET), ==, 0);
      g_assert_cmpuint(fwrite(junk, 1, (gsize)(end - begin), file), ==, (gsize)(end - begin));
      scribbled++;
    }
    g_assert_cmpint(fclose(file), ==, 0);
    const struct timespec times[2] = {before.st_atim, before.st_mtim};
    g_assert_cmpint(utimensat(AT_FDCWD, path, times, 0), ==, 0);
    g_assert_cmpuint(inode_of(path), ==, before.st_ino);
  }
  g_dir_close(dir);
  return scribbled;
}

/* Layers whose packed form is derived (upsample_conv's folded phases),
 * kept whole (the token table) or fp32 in any run (the time embedding's)
 * come from the cache too: with their file
 * tensors overwritten behind the cache key's back, a cached run still
 * equals the original's. */
static void test_cached_layers_skip_the_file(Fixture *f, gconstpointer data) {
  (void)data;
  LcmImage *fresh = run_uncached(f, LCM_PRECISION_FP32, 0);
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0)); /* fills the cache */
  g_assert_cmpint(scribble(f, "unet", "upsamplers.0.conv.weight"), >, 0);
  g_assert_cmpint(scribble(f, "unet", "time_emb_proj.weight"), >, 0); /* fp32 in any run */
  g_assert_cmpint(scribble(f, "vae", "upsamplers.0.conv.weight"), >, 0);
  g_assert_cmpint(scribble(f, "text_encoder", "token_embedding.weight"), >, 0);
  LcmImage *hit = run(f, LCM_PRECISION_FP32, 0);
  assert_same_image(fresh, hit);
  /* Without the cache the scribbles show: the test can tell. */
  LcmImage *scribbled = run_uncached(f, LCM_PRECISION_FP32, 0);
  g_assert_true(memcmp(fresh->data, scribbled->data,
                       (gsize)fresh->width * fresh->height * fresh->channels * sizeof(float)));
  lcm_image_free(fresh);
  lcm_image_free(hit);
  lcm_image_free(scribbled);
}

static void test_lora(Fixture *f, gconstpointer data) {
  (void)data;
  LcmImage *fresh = run_uncached(f, LCM_PRECISION_FP32, 0.5);
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0.5));
  LcmImage *hit = run(f, LCM_PRECISION_FP32, 0.5);
  assert_same_image(fresh, hit);
  g_autofree char *half = only_entry(f, "unet-");
  /* Another scale is another entry, and the run equals its fresh one. */
  LcmImage *fresh_full = run_uncached(f, LCM_PRECISION_FP32, 1.0);
  LcmImage *full = run(f, LCM_PRECISION_FP32, 1.0);
  g_autoptr(GPtrArray) unets = entries(f, "unet-");
  g_assert_cmpuint(unets->len, ==, 2);
  assert_same_image(fresh_full, full);
  g_assert_true(g_file_test(half, G_FILE_TEST_EXISTS));
  /* Without the LoRA: a third entry. */
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0));
  g_autoptr(GPtrArray) all = entries(f, "unet-");
  g_assert_cmpuint(all->len, ==, 3);
  lcm_image_free(fresh);
  lcm_image_free(hit);
  lcm_image_free(fresh_full);
  lcm_image_free(full);
}

static void test_model_file_touched(Fixture *f, gconstpointer data) {
  (void)data;
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0));
  g_autofree char *old = only_entry(f, "unet-");
  /* Same bytes, new modification time: the file may have changed. */
  g_autofree char *unet_folder = g_build_filename(f->model, "unet", NULL);
  GDir *dir = g_dir_open(unet_folder, 0, NULL);
  const char *name;
  while ((name = g_dir_read_name(dir))) {
    g_autofree char *path = g_build_filename(f->model, "unet", name, NULL);
    struct utimbuf times = {.actime = 1000000000, .modtime = 1000000000};
    g_assert_cmpint(g_utime(path, &times), ==, 0);
  }
  g_dir_close(dir);
  LcmImage *fresh = run_uncached(f, LCM_PRECISION_FP32, 0);
  LcmImage *rebuilt = run(f, LCM_PRECISION_FP32, 0);
  g_autoptr(GPtrArray) unets = entries(f, "unet-");
  g_assert_cmpuint(unets->len, ==, 2); /* a new entry next to the stale one */
  g_assert_true(g_file_test(old, G_FILE_TEST_EXISTS));
  /* The VAE and text encoder files did not change: their entries stay. */
  g_autofree char *vae = only_entry(f, "vae-");
  assert_same_image(fresh, rebuilt);
  lcm_image_free(fresh);
  lcm_image_free(rebuilt);
}

static void test_precision_changed(Fixture *f, gconstpointer data) {
  (void)data;
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0));
  LcmImage *bf16 = run(f, LCM_PRECISION_BF16, 0);
  if (!bf16) return;
  g_autoptr(GPtrArray) unets = entries(f, "unet-");
  g_assert_cmpuint(unets->len, ==, 2);
  LcmImage *fresh = run_uncached(f, LCM_PRECISION_BF16, 0);
  assert_same_image(fresh, bf16);
  lcm_image_free(fresh);
  lcm_image_free(bf16);
}

typedef enum { DAMAGE_TRUNCATE, DAMAGE_INDEX, DAMAGE_MAGIC, DAMAGE_EMPTY } Damage;

static void damage(const char *path, Damage kind) {
  g_autofree char *data = NULL;
  gsize size = 0;
  g_assert_true(g_file_get_contents(path, &data, &size, NULL));
  g_assert_cmpuint(size, >, HEADER_SIZE + 1500);
  switch (kind) {
  case DAMAGE_TRUNCATE:
    size /= 2;
    break;
  case DAMAGE_INDEX: /* past the header and the key text: in the index */
    data[HEADER_SIZE + 1500] ^= 0x5a;
    break;
  case DAMAGE_MAGIC:
    data[0] = 'X';
    break;
  case DAMAGE_EMPTY:
    size = 0;
    break;
  }
  g_assert_true(g_file_set_contents(path, data, size, NULL));
}

static void test_damaged(Fixture *f, gconstpointer data) {
  const Damage kind = GPOINTER_TO_INT(data);
  LcmImage *fresh = run_uncached(f, LCM_PRECISION_FP32, 0);
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0));
  g_autofree char *unet = only_entry(f, "unet-");
  struct stat good;
  g_assert_cmpint(stat(unet, &good), ==, 0);
  damage(unet, kind);
  const ino_t damaged_inode = inode_of(unet);
  LcmImage *rebuilt = run(f, LCM_PRECISION_FP32, 0);
  assert_same_image(fresh, rebuilt);
  /* Rewritten whole, and trusted again afterwards. */
  struct stat now;
  g_assert_cmpint(stat(unet, &now), ==, 0);
  g_assert_cmpuint(now.st_ino, !=, damaged_inode);
  g_assert_cmpint(now.st_size, ==, good.st_size);
  LcmImage *hit = run(f, LCM_PRECISION_FP32, 0);
  g_assert_cmpuint(inode_of(unet), ==, now.st_ino);
  assert_same_image(fresh, hit);
  lcm_image_free(fresh);
  lcm_image_free(rebuilt);
  lcm_image_free(hit);
}

static guint64 folder_size(const Fixture *f) {
  g_autoptr(GPtrArray) names = entries(f, "");
  guint64 total = 0;
  for (guint i = 0; i < names->len; i++) {
    struct stat st;
    g_assert_cmpint(stat(names->pdata[i], &st), ==, 0);
    total += st.st_size;
  }
  return total;
}

/* An old entry of `mb` MB made `age` seconds ago. */
static char *old_entry(const Fixture *f, const char *name, int mb, int age) {
  char *path = g_build_filename(f->cache, name, NULL);
  g_autofree char *zeros = g_malloc0((gsize)mb << 20);
  g_assert_true(g_file_set_contents(path, zeros, (gssize)mb << 20, NULL));
  const time_t t = time(NULL) - age;
  struct utimbuf times = {.actime = t, .modtime = t};
  g_assert_cmpint(g_utime(path, &times), ==, 0);
  return path;
}

static void test_eviction(Fixture *f, gconstpointer data) {
  (void)data;
  /* The tiny model's three fp32 entries take about 15 MB. */
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0));
  const guint64 model_bytes = folder_size(f);
  g_assert_cmpuint(model_bytes, >, 1 << 20);
  test_remove_tree(f->cache);
  g_assert_cmpint(g_mkdir_with_parents(f->cache, 0700), ==, 0);
  const int bound_mb = (int)(model_bytes >> 20) + 6;
  g_autofree char *bound = g_strdup_printf("%d", bound_mb);
  g_setenv("GIMP_LCM_WEIGHT_CACHE_MAX_MB", bound, TRUE);
  g_autofree char *oldest = old_entry(f, "unet-oldest.lcmw", 4, 3000);
  g_autofree char *older = old_entry(f, "vae-older.lcmw", 4, 2000);
  g_autofree char *recent = old_entry(f, "unet-recent.lcmw", 4, 1000);
  g_autofree char *temp = g_build_filename(f->cache, ".tmp-dead", NULL);
  g_assert_true(g_file_set_contents(temp, "x", 1, NULL));
  struct utimbuf long_ago = {.actime = time(NULL) - 7200, .modtime = time(NULL) - 7200};
  g_assert_cmpint(g_utime(temp, &long_ago), ==, 0);

  lcm_image_free(run(f, LCM_PRECISION_FP32, 0));
  g_assert_cmpuint(folder_size(f), <=, (guint64)bound_mb << 20);
  /* Least recently used first: the oldest two went, the recent one fits. */
  g_assert_false(g_file_test(oldest, G_FILE_TEST_EXISTS));
  g_assert_false(g_file_test(older, G_FILE_TEST_EXISTS));
  g_assert_true(g_file_test(recent, G_FILE_TEST_EXISTS));
  g_assert_false(g_file_test(temp, G_FILE_TEST_EXISTS));
  g_autoptr(GPtrArray) unets = entries(f, "unet-");
  g_assert_cmpuint(unets->len, ==, 2); /* the recent one and the new one */
}

static void test_over_bound_not_written(Fixture *f, gconstpointer data) {
  (void)data;
  g_setenv("GIMP_LCM_WEIGHT_CACHE_MAX_MB", "1", TRUE);
  LcmImage *fresh = run_uncached(f, LCM_PRECISION_FP32, 0);
  LcmImage *image = run(f, LCM_PRECISION_FP32, 0);
  assert_same_image(fresh, image);
  g_assert_cmpuint(folder_size(f), <=, 1 << 20);
  lcm_image_free(fresh);
  lcm_image_free(image);
}

static void test_disabled(Fixture *f, gconstpointer data) {
  (void)data;
  g_setenv("GIMP_LCM_WEIGHT_CACHE", "off", TRUE);
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0));
  g_assert_false(g_file_test(f->cache, G_FILE_TEST_EXISTS));
}

/* The API overrides the environment (the CLI's --no-weight-cache); in a
 * subprocess, since the override lasts for the process. */
static void test_disabled_by_api(Fixture *f, gconstpointer data) {
  (void)data;
  if (!g_test_subprocess()) {
    g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_INHERIT_STDERR);
    g_test_trap_assert_passed();
    return;
  }
  g_autofree char *xdg = g_build_filename(f->root, "xdg", NULL);
  g_setenv("XDG_CACHE_HOME", xdg, TRUE); /* read once, on first use: not yet */
  lcm_weight_cache_set_enabled(FALSE);
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0));
  g_assert_false(g_file_test(f->cache, G_FILE_TEST_EXISTS));
  lcm_weight_cache_set_enabled(TRUE);
  g_setenv("GIMP_LCM_WEIGHT_CACHE", "off", TRUE);
  lcm_image_free(run(f, LCM_PRECISION_FP32, 0));
  /* On again: the default folder, under XDG_CACHE_HOME. */
  g_autofree char *dir = g_build_filename(xdg, "gimp-lcm", "weights", NULL);
  g_assert_true(g_file_test(dir, G_FILE_TEST_IS_DIR));
  g_assert_cmpstr(g_get_user_cache_dir(), ==, xdg);
}

/* The entry is written in the background after the first size's run while
 * the next sizes add layouts (and may drop the load-time one): the writer
 * must have finished, or snapshot what it writes, before any of that. A
 * fresh process then reads an entry with every size's layouts that gives
 * the uncached images (ASan in CI catches a writer reading freed layouts). */
static void test_sizes_added_while_writing(Fixture *f, gconstpointer data) {
  (void)data;
  static const int sides[] = {64, 128, 40, 96};
  LcmImage *fresh[G_N_ELEMENTS(sides)], *written[G_N_ELEMENTS(sides)], *read[G_N_ELEMENTS(sides)];
  g_setenv("GIMP_LCM_WEIGHT_CACHE", "off", TRUE);
  g_assert_true(run_sides(f, LCM_PRECISION_FP32, 0, sides, G_N_ELEMENTS(sides), fresh));
  g_setenv("GIMP_LCM_WEIGHT_CACHE", f->cache, TRUE);
  g_assert_true(run_sides(f, LCM_PRECISION_FP32, 0, sides, G_N_ELEMENTS(sides), written));
  g_autofree char *unet = only_entry(f, "unet");
  const ino_t first_write = inode_of(unet);
  g_assert_true(run_sides(f, LCM_PRECISION_FP32, 0, sides, G_N_ELEMENTS(sides), read));
  /* Every layout was in the entry: the reading process wrote nothing. */
  g_assert_cmpuint(inode_of(unet), ==, first_write);
  for (guint i = 0; i < G_N_ELEMENTS(sides); i++) {
    assert_same_image(fresh[i], written[i]);
    assert_same_image(fresh[i], read[i]);
    lcm_image_free(fresh[i]);
    lcm_image_free(written[i]);
    lcm_image_free(read[i]);
  }
}

#define ADD(path, fn, data)                                                                        \
  g_test_add(path, Fixture, GINT_TO_POINTER(data), fixture_setup, fn, fixture_teardown)

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  ADD("/weight-cache/hit-equals-fresh/fp32", test_hit_equals_fresh, LCM_PRECISION_FP32);
  ADD("/weight-cache/hit-equals-fresh/bf16", test_hit_equals_fresh, LCM_PRECISION_BF16);
  ADD("/weight-cache/cached-layers-skip-the-file", test_cached_layers_skip_the_file, 0);
  ADD("/weight-cache/stale/lora-scale", test_lora, 0);
  ADD("/weight-cache/stale/model-file-touched", test_model_file_touched, 0);
  ADD("/weight-cache/stale/precision", test_precision_changed, 0);
  ADD("/weight-cache/damaged/truncated", test_damaged, DAMAGE_TRUNCATE);
  ADD("/weight-cache/damaged/index", test_damaged, DAMAGE_INDEX);
  ADD("/weight-cache/damaged/magic", test_damaged, DAMAGE_MAGIC);
  ADD("/weight-cache/damaged/empty", test_damaged, DAMAGE_EMPTY);
  ADD("/weight-cache/sizes-added-while-writing", test_sizes_added_while_writing, 0);
  ADD("/weight-cache/eviction", test_eviction, 0);
  ADD("/weight-cache/over-bound-not-written", test_over_bound_not_written, 0);
  ADD("/weight-cache/disabled/environment", test_disabled, 0);
  ADD("/weight-cache/disabled/api", test_disabled_by_api, 0);
  return g_test_run();
}
