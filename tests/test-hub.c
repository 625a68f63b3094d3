/* The catalogue, downloads from a fake Hub on 127.0.0.1 (redirects, Range
 * resumes, checksums, faults, cancelling) and discovery in a fake Hugging
 * Face cache. Nothing reaches beyond 127.0.0.1. */
#include "fake-hub.h"
#include "lcm.h"
#include "testutil.h"

#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#define DREAMSHAPER "LCM_Dreamshaper_v7"

static FakeHub *hub;
static GPtrArray *catalogue;

/* A fresh empty models folder per test. */
static char *new_models_dir(void) {
  char *dir = g_dir_make_tmp("lcm-hub-models-XXXXXX", NULL);
  g_setenv("GIMP_LCM_MODELS", dir, TRUE);
  return dir;
}

static const LcmCatalogueEntry *entry_named(const char *name) {
  const LcmCatalogueEntry *entry = lcm_catalogue_find(catalogue, name);
  g_assert_nonnull(entry);
  return entry;
}

static char *tiny_model_dir(void) {
  return lcm_find_data_file("tiny-lcm");
}

/* Every file of the entry in `dir` equals the tiny model's. */
static void assert_same_files(const LcmCatalogueEntry *entry, const char *dir) {
  g_autofree char *tiny = tiny_model_dir();
  for (char **file = entry->files; *file; file++) {
    g_autofree char *a = g_build_filename(tiny, *file, NULL);
    g_autofree char *b = g_build_filename(dir, *file, NULL);
    g_autofree char *sha_a = fake_hub_sha256_of(a);
    g_autofree char *sha_b = fake_hub_sha256_of(b);
    g_assert_nonnull(sha_b);
    g_assert_cmpstr(sha_a, ==, sha_b);
  }
}

static guint64 tiny_model_bytes(const LcmCatalogueEntry *entry) {
  g_autofree char *tiny = tiny_model_dir();
  guint64 total = 0;
  for (char **file = entry->files; *file; file++) {
    g_autofree char *path = g_build_filename(tiny, *file, NULL);
    GStatBuf st;
    g_assert_cmpint(g_stat(path, &st), ==, 0);
    total += (guint64)st.st_size;
  }
  return total;
}

/* Nothing that looks like a model under the install name. */
static void assert_not_installed(const LcmCatalogueEntry *entry) {
  g_autofree char *install = lcm_catalogue_install_dir(entry);
  g_assert_false(g_file_test(install, G_FILE_TEST_EXISTS));
  g_assert_null(lcm_catalogue_locate(entry));
  g_autoptr(GPtrArray) found = lcm_discover(catalogue);
  for (guint i = 0; i < found->len; i++) {
    const LcmFoundModel *f = found->pdata[i];
    if (!g_strcmp0(f->catalogue, entry->name))
      g_assert_cmpint(f->where, ==, LCM_FOUND_NOT_DOWNLOADED);
    else
      g_assert_cmpint(f->where, !=, LCM_FOUND_MODELS_FOLDER);
  }
}

typedef struct {
  int calls;
  LcmDownloadProgress last;
  gboolean monotonic;
  gint seen_bytes; /* atomic: the cancel thread waits for it */
} ProgressLog;

static void log_progress(const LcmDownloadProgress *p, gpointer data) {
  ProgressLog *log = data;
  if (log->calls && p->done < log->last.done) log->monotonic = FALSE;
  log->calls++;
  log->last = *p;
  if (p->done > 0) g_atomic_int_set(&log->seen_bytes, 1);
}

static void test_catalogue(void) {
  const LcmCatalogueEntry *model = entry_named(DREAMSHAPER);
  g_assert_cmpstr(model->repo, ==, "SimianLuo/LCM_Dreamshaper_v7");
  g_assert_cmpint(model->kind, ==, LCM_ASSET_MODEL);
  g_assert_true(model->supported);
  g_assert_cmpuint(g_strv_length(model->files), ==, 12);
  g_assert_true(g_strv_contains((const char *const *)model->files,
                                "unet/diffusion_pytorch_model.safetensors"));
  g_assert_true(entry_named("latent-consistency/lcm-lora-sdv1-5") ==
                entry_named("lcm-lora-sdv1-5"));
  g_assert_cmpint(entry_named("lcm-lora-sdv1-5")->kind, ==, LCM_ASSET_LORA);
  g_assert_cmpint(entry_named("taesd")->kind, ==, LCM_ASSET_TAESD);
  g_assert_cmpint(model->n_sources, ==, 1);
  g_assert_cmpstr(model->sources[0].into, ==, "");
  for (const char *const *name = (const char *const[]){"lcm-lora-sdxl", "taesdxl", NULL}; *name;
       name++) {
    const LcmCatalogueEntry *sdxl = entry_named(*name);
    g_assert_cmpstr(sdxl->family, ==, "sdxl");
    g_assert_true(sdxl->supported);
    g_assert_cmpint(sdxl->n_sources, ==, 1);
  }
  /* UNets alone, combined with their base's other parts into one folder. */
  static const struct {
    const char *name, *unet_repo, *base_repo;
  } combined[] = {
      {"lcm-ssd-1b", "latent-consistency/lcm-ssd-1b", "segmind/SSD-1B"},
      {"lcm-sdxl", "latent-consistency/lcm-sdxl", "stabilityai/stable-diffusion-xl-base-1.0"}};
  for (size_t i = 0; i < G_N_ELEMENTS(combined); i++) {
    const LcmCatalogueEntry *entry = entry_named(combined[i].name);
    g_assert_true(entry_named(combined[i].unet_repo) == entry);
    g_assert_cmpstr(entry->family, ==, "sdxl");
    g_assert_cmpstr(entry->install, ==, combined[i].name);
    g_assert_true(entry->supported);
    g_assert_cmpint(entry->n_sources, ==, 2);
    g_assert_cmpstr(entry->sources[0].repo, ==, combined[i].unet_repo);
    g_assert_cmpstr(entry->sources[0].into, ==, "unet");
    g_assert_cmpstr(entry->sources[1].repo, ==, combined[i].base_repo);
    g_assert_cmpstr(entry->sources[1].into, ==, "");
    const char *const *files = (const char *const *)entry->files;
    g_assert_cmpuint(g_strv_length(entry->files), ==, 18);
    for (const char *const *want =
             (const char *const[]){
                 "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                 "unet/diffusion_pytorch_model.fp16.safetensors",
                 "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                 "tokenizer_2/vocab.json", "vae/diffusion_pytorch_model.fp16.safetensors", NULL};
         *want; want++)
      g_assert_true(g_strv_contains(files, *want));
    /* The UNet comes from the LCM repository only. */
    g_assert_true(g_strv_contains((const char *const *)entry->sources[0].files,
                                  "diffusion_pytorch_model.fp16.safetensors"));
    for (char **file = entry->sources[1].files; *file; file++)
      g_assert_false(g_str_has_prefix(*file, "unet/"));
  }
  g_assert_null(lcm_catalogue_find(catalogue, "segmind/SSD-1B")); /* a part, not an entry */
  g_assert_null(lcm_catalogue_find(catalogue, "no-such-model"));

  /* A catalogue that escapes the models folder is refused. */
  g_autofree char *bad = g_build_filename(g_get_tmp_dir(), "lcm-bad-catalogue.json", NULL);
  g_assert_true(g_file_set_contents(
      bad,
      "{\"models\":[{\"name\":\"x\",\"kind\":\"model\",\"family\":\"sd15\",\"repo\":\"a/b\","
      "\"revision\":\"main\",\"install\":\"x\",\"files\":[\"../../etc/passwd\"]}]}",
      -1, NULL));
  GError *error = NULL;
  g_assert_null(lcm_catalogue_load(bad, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, "relative path", NULL);
  g_clear_error(&error);

  /* Sources: refused when two put a file at the same place, when "into"
   * escapes, with both forms at once, or with the old "base". */
  static const struct {
    const char *json, *message;
  } bad_sources[] = {
      {"[{\"repo\":\"a/b\",\"revision\":\"main\",\"into\":\"unet\",\"files\":[\"c.json\"]},"
       "{\"repo\":\"c/d\",\"revision\":\"main\",\"files\":[\"unet/c.json\"]}]",
       "two files at unet/c.json"},
      {"[{\"repo\":\"a/b\",\"revision\":\"main\",\"into\":\"../x\",\"files\":[\"c.json\"]}]",
       "\"into\""},
      {"[{\"repo\":\"a/b\",\"revision\":\"main\",\"files\":[]}]", "non-empty"},
      {"[]", "not both"},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(bad_sources); i++) {
    g_autofree char *json =
        g_strdup_printf("{\"models\":[{\"name\":\"x\",\"kind\":\"model\",\"family\":\"sdxl\","
                        "\"install\":\"x\",\"sources\":%s}]}",
                        bad_sources[i].json);
    g_assert_true(g_file_set_contents(bad, json, -1, NULL));
    g_assert_null(lcm_catalogue_load(bad, &error));
    test_expect_error(error, LCM_ERROR_FORMAT, bad_sources[i].message, NULL);
    g_clear_error(&error);
  }
  g_assert_true(g_file_set_contents(
      bad,
      "{\"models\":[{\"name\":\"x\",\"kind\":\"model\",\"family\":\"sdxl\",\"repo\":\"a/b\","
      "\"revision\":\"main\",\"install\":\"x\",\"files\":[\"c.json\"],"
      "\"sources\":[{\"repo\":\"a/b\",\"revision\":\"main\",\"files\":[\"d.json\"]}]}]}",
      -1, NULL));
  g_assert_null(lcm_catalogue_load(bad, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, "not both", NULL);
  g_clear_error(&error);
  g_assert_true(g_file_set_contents(
      bad,
      "{\"models\":[{\"name\":\"x\",\"kind\":\"model\",\"family\":\"sdxl\",\"repo\":\"a/b\","
      "\"revision\":\"main\",\"install\":\"x\",\"files\":[\"c.json\"],\"base\":\"c/d\"}]}",
      -1, NULL));
  g_assert_null(lcm_catalogue_load(bad, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, "\"sources\"", NULL);
  g_clear_error(&error);
  g_unlink(bad);
}

static void test_endpoint(void) {
  g_autofree char *saved = g_strdup(g_getenv("HF_ENDPOINT"));
  g_unsetenv("HF_ENDPOINT");
  g_autofree char *official = lcm_hub_endpoint();
  g_assert_cmpstr(official, ==, "https://huggingface.co");
  g_setenv("HF_ENDPOINT", "http://mirror.example/", TRUE);
  g_autofree char *mirror = lcm_hub_endpoint();
  g_assert_cmpstr(mirror, ==, "http://mirror.example");
  g_setenv("HF_ENDPOINT", saved, TRUE);
}

static void test_download(void) {
  g_autofree char *models = new_models_dir();
  const LcmCatalogueEntry *entry = entry_named(DREAMSHAPER);
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  assert_not_installed(entry);
  ProgressLog log = {.monotonic = TRUE};
  GError *error = NULL;
  g_assert_true(lcm_catalogue_download(entry, log_progress, &log, NULL, &error));
  g_assert_no_error(error);

  g_autofree char *install = lcm_catalogue_install_dir(entry);
  assert_same_files(entry, install);
  g_assert_cmpint(log.calls, >=, 2);
  g_assert_true(log.monotonic);
  g_assert_cmpuint(log.last.total, ==, tiny_model_bytes(entry));
  g_assert_cmpuint(log.last.done, ==, log.last.total);
  g_assert_cmpint(log.last.file_count, ==, 12);
  g_autofree char *staging = g_build_filename(models, ".LCM_Dreamshaper_v7.download", NULL);
  g_assert_false(g_file_test(staging, G_FILE_TEST_EXISTS));

  /* Found, resolvable by name and repo id, opens, verifies. */
  g_autofree char *located = lcm_catalogue_locate(entry);
  g_assert_cmpstr(located, ==, install);
  g_autofree char *by_name = lcm_resolve(DREAMSHAPER, LCM_ASSET_MODEL, NULL, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(by_name, ==, install);
  gboolean is_test_model = TRUE;
  g_autofree char *chosen = lcm_default_model(&is_test_model);
  g_assert_false(is_test_model);
  g_assert_cmpstr(chosen, ==, install);
  LcmModel *model = lcm_model_open(install, &error);
  g_assert_no_error(error);
  lcm_model_free(model);
  g_assert_true(lcm_catalogue_verify(entry, &error));
  g_assert_no_error(error);

  /* Asking again downloads nothing. */
  int requests = fake_hub_requests(hub);
  g_assert_true(lcm_catalogue_download(entry, NULL, NULL, NULL, &error));
  g_assert_cmpint(fake_hub_requests(hub), ==, requests);

  /* A damaged file fails verification. */
  g_autofree char *vae = g_build_filename(install, "vae/config.json", NULL);
  g_assert_true(g_file_set_contents(vae, "{}", -1, NULL));
  g_assert_false(lcm_catalogue_verify(entry, &error));
  test_expect_error(error, LCM_ERROR_CHECKSUM, "vae/config.json", NULL);
  g_clear_error(&error);
  test_remove_tree(models);
}

static void test_resume_after_drop(void) {
  g_autofree char *models = new_models_dir();
  const LcmCatalogueEntry *entry = entry_named(DREAMSHAPER);
  fake_hub_set_mode(hub, FAKE_HUB_DROP_ONCE);
  int ranges = fake_hub_range_requests(hub);
  GError *error = NULL;
  g_assert_true(lcm_catalogue_download(entry, NULL, NULL, NULL, &error));
  g_assert_no_error(error);
  /* Each of the 3 LFS files was dropped halfway and resumed. */
  g_assert_cmpint(fake_hub_range_requests(hub) - ranges, ==, 3);
  g_autofree char *install = lcm_catalogue_install_dir(entry);
  assert_same_files(entry, install);
  g_assert_true(lcm_catalogue_verify(entry, &error));
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  test_remove_tree(models);
}

/* A .part left by an earlier run continues with a Range request. */
static void test_resume_part_file(void) {
  g_autofree char *models = new_models_dir();
  const LcmCatalogueEntry *entry = entry_named(DREAMSHAPER);
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  g_autofree char *tiny = tiny_model_dir();
  g_autofree char *source =
      g_build_filename(tiny, "unet/diffusion_pytorch_model.safetensors", NULL);
  g_autofree char *unet_dir =
      g_build_filename(models, ".LCM_Dreamshaper_v7.download", "unet", NULL);
  g_assert_cmpint(g_mkdir_with_parents(unet_dir, 0755), ==, 0);
  g_autofree char *part =
      g_build_filename(unet_dir, "diffusion_pytorch_model.safetensors.part", NULL);
  g_autofree char *data = NULL;
  gsize length = 0;
  g_assert_true(g_file_get_contents(source, &data, &length, NULL));
  g_assert_true(g_file_set_contents(part, data, (gssize)(length / 3), NULL));

  ProgressLog log = {.monotonic = TRUE};
  int ranges = fake_hub_range_requests(hub);
  GError *error = NULL;
  g_assert_true(lcm_catalogue_download(entry, log_progress, &log, NULL, &error));
  g_assert_no_error(error);
  g_assert_cmpint(fake_hub_range_requests(hub) - ranges, ==, 1);
  g_autofree char *install = lcm_catalogue_install_dir(entry);
  assert_same_files(entry, install);
  test_remove_tree(models);
}

static void expect_failure(FakeHubMode mode, int code, const char *part1, const char *part2) {
  g_autofree char *models = new_models_dir();
  const LcmCatalogueEntry *entry = entry_named(DREAMSHAPER);
  fake_hub_set_mode(hub, mode);
  GError *error = NULL;
  g_assert_false(lcm_catalogue_download(entry, NULL, NULL, NULL, &error));
  test_expect_error(error, code, DREAMSHAPER, part1, part2, NULL);
  g_clear_error(&error);
  assert_not_installed(entry);
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  test_remove_tree(models);
}

static void test_wrong_checksum(void) {
  expect_failure(FAKE_HUB_WRONG_CHECKSUM, LCM_ERROR_CHECKSUM, "sha256", "nothing was installed");
  /* The bad file is discarded, not kept for a resume. */
  g_autofree char *models = new_models_dir();
  fake_hub_set_mode(hub, FAKE_HUB_WRONG_CHECKSUM);
  g_assert_false(lcm_catalogue_download(entry_named(DREAMSHAPER), NULL, NULL, NULL, NULL));
  g_autofree char *part = g_build_filename(models, ".LCM_Dreamshaper_v7.download", "text_encoder",
                                           "model.safetensors.part", NULL);
  g_assert_false(g_file_test(part, G_FILE_TEST_EXISTS));
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  test_remove_tree(models);
}

static void test_not_found(void) {
  expect_failure(FAKE_HUB_NOT_FOUND, LCM_ERROR_NETWORK, "HTTP 404", "not on the Hub");
}

static void test_server_error(void) {
  expect_failure(FAKE_HUB_SERVER_ERROR, LCM_ERROR_NETWORK, "HTTP 500", "try again later");
}

static void test_offline(void) {
  /* A port nobody listens on: what an unreachable Hub looks like. */
  GSocketListener *listener = g_socket_listener_new();
  GInetAddress *loopback = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
  GSocketAddress *any_port = g_inet_socket_address_new(loopback, 0);
  GSocketAddress *bound = NULL;
  g_assert_true(g_socket_listener_add_address(listener, any_port, G_SOCKET_TYPE_STREAM,
                                              G_SOCKET_PROTOCOL_TCP, NULL, &bound, NULL));
  guint16 port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
  g_socket_listener_close(listener);
  g_object_unref(listener);
  g_object_unref(bound);
  g_object_unref(any_port);
  g_object_unref(loopback);

  g_autofree char *saved = g_strdup(g_getenv("HF_ENDPOINT"));
  g_autofree char *closed = g_strdup_printf("http://127.0.0.1:%u", port);
  g_setenv("HF_ENDPOINT", closed, TRUE);
  expect_failure(FAKE_HUB_NORMAL, LCM_ERROR_NETWORK, "127.0.0.1", "internet connection");
  g_setenv("HF_ENDPOINT", saved, TRUE);
}

static void test_disk_full(void) {
  g_autofree char *models = new_models_dir();
  const LcmCatalogueEntry *entry = entry_named(DREAMSHAPER);
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  g_autofree char *dir = g_build_filename(models, ".LCM_Dreamshaper_v7.download", "unet", NULL);
  g_assert_cmpint(g_mkdir_with_parents(dir, 0755), ==, 0);
  /* /dev/full fails every write with ENOSPC, as a full disk does. */
  g_autofree char *part = g_build_filename(dir, "diffusion_pytorch_model.safetensors.part", NULL);
  g_assert_cmpint(symlink("/dev/full", part), ==, 0);
  GError *error = NULL;
  g_assert_false(lcm_catalogue_download(entry, NULL, NULL, NULL, &error));
  test_expect_error(error, LCM_ERROR_IO, "disk is full", "GIMP_LCM_MODELS", NULL);
  g_clear_error(&error);
  assert_not_installed(entry);
  test_remove_tree(models);
}

typedef struct {
  ProgressLog *log;
  GCancellable *cancellable;
  gint64 cancelled_at;
} Canceller;

static gpointer cancel_when_data_flows(gpointer data) {
  Canceller *c = data;
  while (!g_atomic_int_get(&c->log->seen_bytes)) g_usleep(10000);
  g_usleep(200000); /* the download is now blocked on the stalled server */
  c->cancelled_at = g_get_monotonic_time();
  g_cancellable_cancel(c->cancellable);
  return NULL;
}

static void test_cancel_slow_server(void) {
  g_autofree char *models = new_models_dir();
  const LcmCatalogueEntry *entry = entry_named(DREAMSHAPER);
  fake_hub_set_mode(hub, FAKE_HUB_STALL);
  ProgressLog log = {.monotonic = TRUE};
  Canceller c = {.log = &log, .cancellable = g_cancellable_new()};
  GThread *thread = g_thread_new("cancel", cancel_when_data_flows, &c);
  GError *error = NULL;
  gboolean ok = lcm_catalogue_download(entry, log_progress, &log, c.cancellable, &error);
  gint64 returned_at = g_get_monotonic_time();
  g_thread_join(thread);
  g_assert_false(ok);
  test_expect_error(error, LCM_ERROR_CANCELLED, "cancelled", NULL);
  g_clear_error(&error);
  g_test_message("cancel landed after %.0f ms", (returned_at - c.cancelled_at) / 1e3);
  g_assert_cmpint(returned_at - c.cancelled_at, <, G_USEC_PER_SEC / 2);
  assert_not_installed(entry);
  g_object_unref(c.cancellable);
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  test_remove_tree(models);
}

/* ---- Discovery in a Hugging Face cache ---------------------------------------- */

/* Puts `files` of `source_dir` into cache/models--ORG--NAME the way
 * huggingface_hub does: blobs named by hash, snapshots/REV/... symlinks to
 * them, refs/main holding REV. */
static void cache_repo(const char *cache, const char *repo, const char *source_dir,
                       const char *const *files) {
  const char *rev = "1111111111111111111111111111111111111111";
  g_auto(GStrv) parts = g_strsplit(repo, "/", 2);
  g_autofree char *name = g_strdup_printf("models--%s--%s", parts[0], parts[1]);
  g_autofree char *root = g_build_filename(cache, name, NULL);
  g_autofree char *blobs = g_build_filename(root, "blobs", NULL);
  g_autofree char *refs = g_build_filename(root, "refs", NULL);
  g_autofree char *snapshot = g_build_filename(root, "snapshots", rev, NULL);
  g_assert_cmpint(g_mkdir_with_parents(blobs, 0755), ==, 0);
  g_assert_cmpint(g_mkdir_with_parents(refs, 0755), ==, 0);
  g_autofree char *main_ref = g_build_filename(refs, "main", NULL);
  g_assert_true(g_file_set_contents(main_ref, rev, -1, NULL));
  for (const char *const *file = files; *file; file++) {
    g_autofree char *source = g_build_filename(source_dir, *file, NULL);
    g_autofree char *data = NULL;
    gsize length = 0;
    g_assert_true(g_file_get_contents(source, &data, &length, NULL));
    g_autofree char *hash = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, length);
    g_autofree char *blob = g_build_filename(blobs, hash, NULL);
    g_assert_true(g_file_set_contents(blob, data, (gssize)length, NULL));
    g_autofree char *link = g_build_filename(snapshot, *file, NULL);
    g_autofree char *link_dir = g_path_get_dirname(link);
    g_assert_cmpint(g_mkdir_with_parents(link_dir, 0755), ==, 0);
    /* Relative, as huggingface_hub makes them: ../../blobs/HASH from the snapshot root. */
    GString *target = g_string_new("");
    for (const char *c = *file; *c; c++)
      if (*c == '/') g_string_append(target, "../");
    g_string_append_printf(target, "../../blobs/%s", hash);
    g_assert_cmpint(symlink(target->str, link), ==, 0);
    g_string_free(target, TRUE);
  }
}

/* Every path under dir with its size, to show the cache is left alone. */
static void list_tree(const char *dir, GString *out) {
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  for (const char *name; d && (name = g_dir_read_name(d));) {
    g_autofree char *path = g_build_filename(dir, name, NULL);
    GStatBuf st;
    g_lstat(path, &st);
    g_string_append_printf(out, "%s %lld\n", path, (long long)st.st_size);
    if (S_ISDIR(st.st_mode)) list_tree(path, out);
  }
}

static const LcmFoundModel *find_found(const GPtrArray *found, const char *name) {
  for (guint i = 0; i < found->len; i++) {
    const LcmFoundModel *f = found->pdata[i];
    if (!strcmp(f->name, name)) return f;
  }
  return NULL;
}

static void test_hf_cache_discovery(void) {
  g_autofree char *models = new_models_dir();
  g_autofree char *home = g_dir_make_tmp("lcm-hf-home-XXXXXX", NULL);
  g_autofree char *cache = g_build_filename(home, "hub", NULL);
  g_setenv("HF_HOME", home, TRUE);
  g_unsetenv("HF_HUB_CACHE");
  g_autofree char *found_cache = lcm_hf_cache_dir();
  g_assert_cmpstr(found_cache, ==, cache);

  const LcmCatalogueEntry *entry = entry_named(DREAMSHAPER);
  g_autofree char *tiny = tiny_model_dir();
  cache_repo(cache, entry->repo, tiny, (const char *const *)entry->files);
  g_autofree char *lora_dir = test_data_path("golden/lora");
  cache_repo(cache, "someone/style-lora", lora_dir,
             (const char *const[]){"lora_a_peft.safetensors", NULL});
  /* A LoRA in the models folder, found by file name. */
  g_autofree char *lora_source = g_build_filename(lora_dir, "lora_b_kohya.safetensors", NULL);
  g_autofree char *lora_copy = g_build_filename(models, "my-style.safetensors", NULL);
  g_autofree char *lora_data = NULL;
  gsize lora_length = 0;
  g_assert_true(g_file_get_contents(lora_source, &lora_data, &lora_length, NULL));
  g_assert_true(g_file_set_contents(lora_copy, lora_data, (gssize)lora_length, NULL));
  /* The catalogue's LCM-LoRA, pinned to a commit, cached by diffusers at main. */
  g_autofree char *renamed = g_build_filename(home, "pytorch_lora_weights.safetensors", NULL);
  g_assert_true(g_file_set_contents(renamed, lora_data, (gssize)lora_length, NULL));
  cache_repo(cache, "latent-consistency/lcm-lora-sdv1-5", home,
             (const char *const[]){"pytorch_lora_weights.safetensors", NULL});
  g_unlink(renamed);
  GString *before = g_string_new("");
  list_tree(cache, before);

  const char *rev = "1111111111111111111111111111111111111111";
  g_autofree char *snapshot =
      g_build_filename(cache, "models--SimianLuo--LCM_Dreamshaper_v7", "snapshots", rev, NULL);
  g_autoptr(GPtrArray) found = lcm_discover(catalogue);
  const LcmFoundModel *model = find_found(found, DREAMSHAPER);
  g_assert_nonnull(model);
  g_assert_cmpint(model->where, ==, LCM_FOUND_HF_CACHE);
  g_assert_cmpint(model->kind, ==, LCM_ASSET_MODEL);
  g_assert_cmpstr(model->path, ==, snapshot);
  const LcmFoundModel *cached_lora = find_found(found, "someone/style-lora");
  g_assert_nonnull(cached_lora);
  g_assert_cmpint(cached_lora->kind, ==, LCM_ASSET_LORA);
  g_assert_true(g_str_has_suffix(cached_lora->path, "lora_a_peft.safetensors"));
  const LcmFoundModel *local_lora = find_found(found, "my-style.safetensors");
  g_assert_nonnull(local_lora);
  g_assert_cmpint(local_lora->kind, ==, LCM_ASSET_LORA);
  g_assert_cmpint(local_lora->where, ==, LCM_FOUND_MODELS_FOLDER);
  const LcmFoundModel *lcm_lora = find_found(found, "lcm-lora-sdv1-5");
  g_assert_nonnull(lcm_lora);
  g_assert_cmpint(lcm_lora->where, ==, LCM_FOUND_HF_CACHE);
  g_assert_true(g_str_has_suffix(lcm_lora->path, "/pytorch_lora_weights.safetensors"));
  const LcmFoundModel *missing = find_found(found, "taesd");
  g_assert_nonnull(missing);
  g_assert_cmpint(missing->where, ==, LCM_FOUND_NOT_DOWNLOADED);
  g_assert_null(missing->path);
  const LcmFoundModel *sdxl_lora = find_found(found, "lcm-lora-sdxl");
  g_assert_nonnull(sdxl_lora);
  g_assert_cmpint(sdxl_lora->where, ==, LCM_FOUND_NOT_DOWNLOADED);
  const LcmFoundModel *ssd = find_found(found, "lcm-ssd-1b"); /* two repositories: offered */
  g_assert_nonnull(ssd);
  g_assert_cmpint(ssd->where, ==, LCM_FOUND_NOT_DOWNLOADED);

  /* One resolver: catalogue name, repo id, path, default. */
  GError *error = NULL;
  g_autofree char *by_name = lcm_resolve(DREAMSHAPER, LCM_ASSET_MODEL, NULL, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(by_name, ==, snapshot);
  g_autofree char *by_repo =
      lcm_resolve("SimianLuo/LCM_Dreamshaper_v7", LCM_ASSET_MODEL, NULL, &error);
  g_assert_cmpstr(by_repo, ==, snapshot);
  g_autofree char *lora = lcm_resolve("someone/style-lora", LCM_ASSET_LORA, NULL, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(lora, ==, cached_lora->path);
  g_autofree char *local = lcm_resolve("my-style.safetensors", LCM_ASSET_LORA, NULL, &error);
  g_assert_cmpstr(local, ==, lora_copy);
  g_autofree char *by_path = lcm_resolve(tiny, LCM_ASSET_MODEL, NULL, &error);
  g_assert_cmpstr(by_path, ==, tiny);
  gboolean is_test_model = TRUE;
  g_autofree char *chosen = lcm_resolve(NULL, LCM_ASSET_MODEL, &is_test_model, &error);
  g_assert_false(is_test_model);
  g_assert_cmpstr(chosen, ==, snapshot);
  LcmModel *opened = lcm_model_open(snapshot, &error);
  g_assert_no_error(error);
  lcm_model_free(opened);

  g_assert_null(lcm_resolve("taesd", LCM_ASSET_TAESD, NULL, &error));
  test_expect_error(error, LCM_ERROR_MISSING, "not downloaded yet", "models get taesd", NULL);
  g_clear_error(&error);
  g_assert_null(lcm_resolve("nobody/nothing", LCM_ASSET_MODEL, NULL, &error));
  test_expect_error(error, LCM_ERROR_MISSING, "nobody/nothing", cache, NULL);
  g_clear_error(&error);

  /* Read only: the cache is exactly as it was. */
  GString *after = g_string_new("");
  list_tree(cache, after);
  g_assert_cmpstr(before->str, ==, after->str);
  g_string_free(before, TRUE);
  g_string_free(after, TRUE);

  /* HF_HUB_CACHE wins over HF_HOME. */
  g_setenv("HF_HUB_CACHE", "/elsewhere/hub", TRUE);
  g_autofree char *override = lcm_hf_cache_dir();
  g_assert_cmpstr(override, ==, "/elsewhere/hub");
  g_unsetenv("HF_HUB_CACHE");
  g_unsetenv("HF_HOME");
  test_remove_tree(home);
  test_remove_tree(models);
}

static void copy_file(const char *from, const char *to) {
  g_autofree char *data = NULL;
  gsize length = 0;
  g_assert_true(g_file_get_contents(from, &data, &length, NULL));
  g_assert_true(g_file_set_contents(to, data, (gssize)length, NULL));
}

/* The SDXL family: a diffusers SDXL folder (...XLPipeline) in the Hugging
 * Face cache and an SDXL single-file checkpoint in the models folder are
 * listed as models and open as SDXL; lcm-lora-sdxl and taesdxl download from
 * the (fake) Hub into what the LoRA loader and the preview take. */
static void test_sdxl_family(void) {
  g_autofree char *models = new_models_dir();
  g_autofree char *cache = g_dir_make_tmp("lcm-hf-sdxl-XXXXXX", NULL);
  g_setenv("HF_HUB_CACHE", cache, TRUE);
  g_autofree char *tiny_sdxl = test_data_path("golden-sdxl/tiny-sdxl-lcm");
  static const char *const sdxl_files[] = {"model_index.json",
                                           "scheduler/scheduler_config.json",
                                           "text_encoder/config.json",
                                           "text_encoder/model.safetensors",
                                           "text_encoder_2/config.json",
                                           "text_encoder_2/model.safetensors",
                                           "tokenizer/merges.txt",
                                           "tokenizer/special_tokens_map.json",
                                           "tokenizer/tokenizer_config.json",
                                           "tokenizer/vocab.json",
                                           "tokenizer_2/merges.txt",
                                           "tokenizer_2/special_tokens_map.json",
                                           "tokenizer_2/tokenizer_config.json",
                                           "tokenizer_2/vocab.json",
                                           "unet/config.json",
                                           "unet/diffusion_pytorch_model.safetensors",
                                           "vae/config.json",
                                           "vae/diffusion_pytorch_model.safetensors",
                                           NULL};
  cache_repo(cache, "someone/tiny-sdxl", tiny_sdxl, sdxl_files);
  g_autofree char *checkpoint_source = test_data_path("golden-sdxl/tiny-sdxl-lcm.safetensors");
  g_autofree char *checkpoint = g_build_filename(models, "my-sdxl.safetensors", NULL);
  copy_file(checkpoint_source, checkpoint);

  g_autoptr(GPtrArray) found = lcm_discover(catalogue);
  const LcmFoundModel *cached = find_found(found, "someone/tiny-sdxl");
  g_assert_nonnull(cached);
  g_assert_cmpint(cached->kind, ==, LCM_ASSET_MODEL);
  g_assert_cmpint(cached->where, ==, LCM_FOUND_HF_CACHE);
  const LcmFoundModel *single = find_found(found, "my-sdxl.safetensors");
  g_assert_nonnull(single);
  g_assert_cmpint(single->kind, ==, LCM_ASSET_MODEL);
  GError *error = NULL;
  g_autofree char *resolved = lcm_resolve("someone/tiny-sdxl", LCM_ASSET_MODEL, NULL, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(resolved, ==, cached->path);
  LcmModel *model = lcm_model_open(resolved, &error);
  g_assert_no_error(error);
  g_assert_cmpint(lcm_model_family(model), ==, LCM_FAMILY_SDXL);

  /* lcm-lora-sdxl from the Hub merges into the SDXL model. */
  g_autofree char *lora_repo = g_dir_make_tmp("lcm-hub-sdxl-lora-XXXXXX", NULL);
  g_autofree char *lora_source =
      test_data_path("golden-sdxl/lora/lcm_lora_sdxl_like_kohya.safetensors");
  g_autofree char *lora_file =
      g_build_filename(lora_repo, "pytorch_lora_weights.safetensors", NULL);
  copy_file(lora_source, lora_file);
  fake_hub_add_repo(hub, "latent-consistency/lcm-lora-sdxl", lora_repo);
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  g_assert_true(lcm_catalogue_download(entry_named("lcm-lora-sdxl"), NULL, NULL, NULL, &error));
  g_assert_no_error(error);
  g_autofree char *lora = lcm_resolve("lcm-lora-sdxl", LCM_ASSET_LORA, NULL, &error);
  g_assert_no_error(error);
  g_assert_true(lcm_model_add_lora(model, lora, 1.0f, &error));
  g_assert_no_error(error);
  lcm_model_free(model);

  /* taesdxl from the Hub is the SDXL models' preview decoder, not SD1.5's. */
  g_autofree char *taesd_repo = g_dir_make_tmp("lcm-hub-taesdxl-XXXXXX", NULL);
  g_autofree char *taesd_source =
      test_data_path("golden/tiny-taesd/diffusion_pytorch_model.safetensors");
  for (const char *const *name = (const char *const[]){"taesdxl_decoder.safetensors",
                                                       "taesdxl_encoder.safetensors", NULL};
       *name; name++) {
    g_autofree char *file = g_build_filename(taesd_repo, *name, NULL);
    copy_file(taesd_source, file);
  }
  fake_hub_add_repo(hub, "madebyollin/taesdxl", taesd_repo);
  g_assert_true(lcm_catalogue_download(entry_named("taesdxl"), NULL, NULL, NULL, &error));
  g_assert_no_error(error);
  g_autofree char *installed = g_build_filename(models, "taesdxl", NULL);
  g_autofree char *for_sdxl = lcm_find_taesd(resolved, LCM_FAMILY_SDXL);
  g_assert_cmpstr(for_sdxl, ==, installed);
  g_autofree char *for_sd15 = lcm_find_taesd(NULL, LCM_FAMILY_SD15);
  g_assert_null(for_sd15);
  g_autoptr(GPtrArray) after = lcm_discover(catalogue);
  const LcmFoundModel *taesdxl = find_found(after, "taesdxl");
  g_assert_nonnull(taesdxl);
  g_assert_cmpint(taesdxl->kind, ==, LCM_ASSET_TAESD);
  g_assert_cmpint(taesdxl->where, ==, LCM_FOUND_MODELS_FOLDER);

  g_setenv("HF_HUB_CACHE", "/nonexistent/hf-cache", TRUE);
  test_remove_tree(taesd_repo);
  test_remove_tree(lora_repo);
  test_remove_tree(cache);
  test_remove_tree(models);
}

/* ---- Entries combining several repositories --------------------------------- */

/* tiny-ssd1b-lcm's UNet as an LCM repository of its own (a UNet at the
 * root, as latent-consistency/lcm-ssd-1b is), everything but the UNet from
 * tiny-sdxl-lcm as its base: the shape of lcm-ssd-1b. */
#define TINY_UNET_REPO "test/tiny-ssd1b-unet"
#define TINY_BASE_REPO "test/tiny-sdxl-base"
#define TINY_COMBINED "tiny-ssd1b-combined"

static const char *const tiny_base_files[] = {"model_index.json",
                                              "scheduler/scheduler_config.json",
                                              "text_encoder/config.json",
                                              "text_encoder/model.safetensors",
                                              "text_encoder_2/config.json",
                                              "text_encoder_2/model.safetensors",
                                              "tokenizer/merges.txt",
                                              "tokenizer/special_tokens_map.json",
                                              "tokenizer/tokenizer_config.json",
                                              "tokenizer/vocab.json",
                                              "tokenizer_2/merges.txt",
                                              "tokenizer_2/special_tokens_map.json",
                                              "tokenizer_2/tokenizer_config.json",
                                              "tokenizer_2/vocab.json",
                                              "vae/config.json",
                                              "vae/diffusion_pytorch_model.safetensors",
                                              NULL};

/* A catalogue of TINY_COMBINED and, with a file its base lacks,
 * "tiny-missing-part"; the fake Hub serves both repositories. */
static GPtrArray *combined_catalogue(void) {
  g_autofree char *unet = test_data_path("golden-sdxl/tiny-ssd1b-lcm/unet");
  g_autofree char *base = test_data_path("golden-sdxl/tiny-sdxl-lcm");
  fake_hub_add_repo(hub, TINY_UNET_REPO, unet);
  fake_hub_add_repo(hub, TINY_BASE_REPO, base);
  GString *files = g_string_new("");
  for (const char *const *file = tiny_base_files; *file; file++)
    g_string_append_printf(files, "%s\"%s\"", file == tiny_base_files ? "" : ",", *file);
  g_autofree char *json = g_strdup_printf(
      "{\"models\":["
      "{\"name\":\"" TINY_COMBINED
      "\",\"kind\":\"model\",\"family\":\"sdxl\",\"install\":\"" TINY_COMBINED "\",\"sources\":["
      "{\"repo\":\"" TINY_UNET_REPO "\",\"revision\":\"main\",\"into\":\"unet\","
      "\"files\":[\"config.json\",\"diffusion_pytorch_model.safetensors\"]},"
      "{\"repo\":\"" TINY_BASE_REPO "\",\"revision\":\"main\",\"files\":[%s]}]},"
      "{\"name\":\"tiny-missing-part\",\"kind\":\"model\",\"family\":\"sdxl\","
      "\"install\":\"tiny-missing-part\",\"sources\":["
      "{\"repo\":\"" TINY_UNET_REPO "\",\"revision\":\"main\",\"into\":\"unet\","
      "\"files\":[\"config.json\",\"diffusion_pytorch_model.safetensors\"]},"
      "{\"repo\":\"" TINY_BASE_REPO "\",\"revision\":\"main\","
      "\"files\":[\"model_index.json\",\"vae/no-such-file.safetensors\"]}]}]}",
      files->str);
  g_string_free(files, TRUE);
  g_autofree char *path = g_build_filename(g_get_tmp_dir(), "lcm-combined-catalogue.json", NULL);
  g_assert_true(g_file_set_contents(path, json, -1, NULL));
  GError *error = NULL;
  GPtrArray *result = lcm_catalogue_load(path, &error);
  g_assert_no_error(error);
  g_unlink(path);
  return result;
}

/* The file `install_path` of the combined folder: the UNet's from
 * tiny-ssd1b-lcm, the rest from tiny-sdxl-lcm. */
static char *combined_source_of(const char *install_path) {
  g_autofree char *relative =
      g_strconcat(g_str_has_prefix(install_path, "unet/") ? "golden-sdxl/tiny-ssd1b-lcm/"
                                                          : "golden-sdxl/tiny-sdxl-lcm/",
                  install_path, NULL);
  return test_data_path(relative);
}

/* Final latents of a 2-step txt2img through the model at `path`. */
static float *combined_latents(const char *path, int *count) {
  GError *error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  g_assert_no_error(error);
  g_assert_cmpint(lcm_model_family(model), ==, LCM_FAMILY_SDXL);
  LcmPipeline *pipeline = lcm_pipeline_new(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  lcm_model_free(model);
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  params.prompt = "a lighthouse";
  params.width = 64;
  params.height = 96;
  params.steps = 2;
  params.seed = 7;
  params.guidance_scale = 8.0;
  int width = 0, height = 0;
  float *latents = lcm_pipeline_run_latents(pipeline, &params, &width, &height, &error);
  g_assert_no_error(error);
  g_assert_cmpint(width, ==, 8);
  g_assert_cmpint(height, ==, 12);
  *count = lcm_pipeline_latent_channels(pipeline) * width * height;
  lcm_pipeline_free(pipeline);
  return latents;
}

/* Both repositories into one diffusers folder, which opens and runs exactly
 * as the folder a user would assemble by hand (SDXL's parts, SSD-1B's
 * UNet), and not as the base's own UNet would. */
static void test_combined_download(void) {
  g_autofree char *models = new_models_dir();
  g_autoptr(GPtrArray) tiny_catalogue = combined_catalogue();
  const LcmCatalogueEntry *entry = lcm_catalogue_find(tiny_catalogue, TINY_COMBINED);
  g_assert_nonnull(entry);
  g_assert_cmpint(entry->n_sources, ==, 2);
  g_assert_cmpuint(g_strv_length(entry->files), ==, 18);
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);

  /* The UNet repository alone in the Hugging Face cache is not the model. */
  g_autofree char *cache = g_dir_make_tmp("lcm-hf-combined-XXXXXX", NULL);
  g_setenv("HF_HUB_CACHE", cache, TRUE);
  g_autofree char *unet_dir = test_data_path("golden-sdxl/tiny-ssd1b-lcm/unet");
  cache_repo(cache, TINY_UNET_REPO, unet_dir,
             (const char *const[]){"config.json", "diffusion_pytorch_model.safetensors", NULL});
  g_assert_null(lcm_catalogue_locate(entry));
  g_autoptr(GPtrArray) before = lcm_discover(tiny_catalogue);
  const LcmFoundModel *offered = find_found(before, TINY_COMBINED);
  g_assert_nonnull(offered);
  g_assert_cmpint(offered->where, ==, LCM_FOUND_NOT_DOWNLOADED);
  g_assert_null(find_found(before, TINY_UNET_REPO));

  ProgressLog log = {.monotonic = TRUE};
  GError *error = NULL;
  g_assert_true(lcm_catalogue_download(entry, log_progress, &log, NULL, &error));
  g_assert_no_error(error);
  g_assert_true(log.monotonic);
  g_assert_cmpint(log.last.file_count, ==, 18);
  g_assert_cmpuint(log.last.done, ==, log.last.total);

  /* Every file where it belongs, from the repository it belongs to. */
  g_autofree char *install = lcm_catalogue_install_dir(entry);
  guint64 total = 0;
  for (char **file = entry->files; *file; file++) {
    g_autofree char *source = combined_source_of(*file);
    g_autofree char *installed = g_build_filename(install, *file, NULL);
    g_autofree char *want = fake_hub_sha256_of(source);
    g_autofree char *got = fake_hub_sha256_of(installed);
    g_assert_nonnull(got);
    g_assert_cmpstr(got, ==, want);
    GStatBuf st;
    g_assert_cmpint(g_stat(source, &st), ==, 0);
    total += (guint64)st.st_size;
  }
  g_assert_cmpuint(log.last.total, ==, total);
  g_autofree char *sdxl_unet =
      test_data_path("golden-sdxl/tiny-sdxl-lcm/unet/diffusion_pytorch_model.safetensors");
  g_autofree char *installed_unet =
      g_build_filename(install, "unet/diffusion_pytorch_model.safetensors", NULL);
  g_autofree char *sdxl_sha = fake_hub_sha256_of(sdxl_unet);
  g_autofree char *unet_sha = fake_hub_sha256_of(installed_unet);
  g_assert_cmpstr(sdxl_sha, !=, unet_sha);
  g_autofree char *staging = g_build_filename(models, "." TINY_COMBINED ".download", NULL);
  g_assert_false(g_file_test(staging, G_FILE_TEST_EXISTS));

  /* Present, listed under its name, verified. */
  g_autofree char *located = lcm_catalogue_locate(entry);
  g_assert_cmpstr(located, ==, install);
  g_autoptr(GPtrArray) after = lcm_discover(tiny_catalogue);
  const LcmFoundModel *found = find_found(after, TINY_COMBINED);
  g_assert_nonnull(found);
  g_assert_cmpint(found->where, ==, LCM_FOUND_MODELS_FOLDER);
  g_assert_cmpint(found->kind, ==, LCM_ASSET_MODEL);
  g_assert_cmpstr(found->path, ==, install);
  g_assert_true(lcm_catalogue_verify(entry, &error));
  g_assert_no_error(error);

  /* It runs as the hand-made folder: SDXL's parts with SSD-1B's UNet. */
  g_autofree char *by_hand = g_dir_make_tmp("lcm-combined-by-hand-XXXXXX", NULL);
  g_autofree char *sdxl = test_data_path("golden-sdxl/tiny-sdxl-lcm");
  for (const char *const *part =
           (const char *const[]){"model_index.json", "scheduler", "text_encoder", "text_encoder_2",
                                 "tokenizer", "tokenizer_2", "vae", NULL};
       *part; part++) {
    g_autofree char *target = g_build_filename(sdxl, *part, NULL);
    g_autofree char *link = g_build_filename(by_hand, *part, NULL);
    g_assert_cmpint(symlink(target, link), ==, 0);
  }
  g_autofree char *hand_unet = g_build_filename(by_hand, "unet", NULL);
  g_assert_cmpint(symlink(unet_dir, hand_unet), ==, 0);
  int n = 0, n_hand = 0, n_sdxl = 0;
  g_autofree float *downloaded = combined_latents(install, &n);
  g_autofree float *hand_made = combined_latents(by_hand, &n_hand);
  g_autofree float *sdxl_own = combined_latents(sdxl, &n_sdxl);
  g_assert_cmpint(n, >, 0);
  g_assert_cmpint(n, ==, n_hand);
  g_assert_cmpint(n, ==, n_sdxl);
  g_assert_cmpmem(downloaded, n * sizeof(float), hand_made, n_hand * sizeof(float));
  g_assert_true(memcmp(downloaded, sdxl_own, n * sizeof(float)) != 0);

  /* Asking again downloads nothing; a damaged part of the base fails
   * verification. */
  int requests = fake_hub_requests(hub);
  g_assert_true(lcm_catalogue_download(entry, NULL, NULL, NULL, &error));
  g_assert_cmpint(fake_hub_requests(hub), ==, requests);
  g_autofree char *te2 = g_build_filename(install, "text_encoder_2/config.json", NULL);
  g_assert_true(g_file_set_contents(te2, "{}", -1, NULL));
  g_assert_false(lcm_catalogue_verify(entry, &error));
  test_expect_error(error, LCM_ERROR_CHECKSUM, "text_encoder_2/config.json", NULL);
  g_clear_error(&error);

  g_setenv("HF_HUB_CACHE", "/nonexistent/hf-cache", TRUE);
  test_remove_tree(by_hand);
  test_remove_tree(cache);
  test_remove_tree(models);
}

/* Nothing of a combined entry looks installed while a part is missing. */
static void assert_combined_not_installed(const GPtrArray *tiny_catalogue,
                                          const LcmCatalogueEntry *entry) {
  g_autofree char *install = lcm_catalogue_install_dir(entry);
  g_assert_false(g_file_test(install, G_FILE_TEST_EXISTS));
  g_assert_null(lcm_catalogue_locate(entry));
  g_autoptr(GPtrArray) found = lcm_discover(tiny_catalogue);
  for (guint i = 0; i < found->len; i++) {
    const LcmFoundModel *f = found->pdata[i];
    g_assert_cmpint(f->where, !=, LCM_FOUND_MODELS_FOLDER);
    if (!g_strcmp0(f->catalogue, entry->name))
      g_assert_cmpint(f->where, ==, LCM_FOUND_NOT_DOWNLOADED);
  }
  g_autoptr(GError) error = NULL;
  g_assert_false(lcm_catalogue_verify(entry, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_MISSING);
}

typedef struct {
  ProgressLog log;
  int first_base_file; /* index of the base repository's first file */
  gboolean failed_over;
} FailSecond;

/* Once the first repository's files are in, the Hub loses the second. */
static void fail_second_repository(const LcmDownloadProgress *p, gpointer data) {
  FailSecond *f = data;
  log_progress(p, &f->log);
  if (p->file_index >= f->first_base_file && !f->failed_over) {
    f->failed_over = TRUE;
    fake_hub_set_mode(hub, FAKE_HUB_NOT_FOUND);
  }
}

/* The second repository answers 404 after the first one's files are in:
 * nothing looks installed, and the next attempt keeps what was verified. */
static void test_combined_second_fails(void) {
  g_autofree char *models = new_models_dir();
  g_autoptr(GPtrArray) tiny_catalogue = combined_catalogue();
  const LcmCatalogueEntry *entry = lcm_catalogue_find(tiny_catalogue, TINY_COMBINED);
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  FailSecond fail = {.log = {.monotonic = TRUE}, .first_base_file = 2};
  GError *error = NULL;
  g_assert_false(lcm_catalogue_download(entry, fail_second_repository, &fail, NULL, &error));
  g_assert_true(fail.failed_over);
  test_expect_error(error, LCM_ERROR_NETWORK, TINY_COMBINED, "HTTP 404", TINY_BASE_REPO,
                    "not on the Hub", NULL);
  g_clear_error(&error);
  assert_combined_not_installed(tiny_catalogue, entry);

  /* The first repository's UNet is complete in the hidden staging folder. */
  g_autofree char *staged_unet = g_build_filename(models, "." TINY_COMBINED ".download", "unet",
                                                  "diffusion_pytorch_model.safetensors", NULL);
  g_autofree char *unet_source =
      test_data_path("golden-sdxl/tiny-ssd1b-lcm/unet/diffusion_pytorch_model.safetensors");
  g_autofree char *staged_sha = fake_hub_sha256_of(staged_unet);
  g_autofree char *source_sha = fake_hub_sha256_of(unet_source);
  g_assert_cmpstr(staged_sha, ==, source_sha);
  GStatBuf staged;
  g_assert_cmpint(g_stat(staged_unet, &staged), ==, 0);

  /* Back online: the download completes, keeping the verified UNet file
   * (same inode: not fetched again). */
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  ProgressLog log = {.monotonic = TRUE};
  g_assert_true(lcm_catalogue_download(entry, log_progress, &log, NULL, &error));
  g_assert_no_error(error);
  g_autofree char *install = lcm_catalogue_install_dir(entry);
  g_autofree char *installed_unet =
      g_build_filename(install, "unet", "diffusion_pytorch_model.safetensors", NULL);
  GStatBuf installed;
  g_assert_cmpint(g_stat(installed_unet, &installed), ==, 0);
  g_assert_cmpuint(installed.st_ino, ==, staged.st_ino);
  g_autofree char *located = lcm_catalogue_locate(entry);
  g_assert_cmpstr(located, ==, install);
  g_assert_true(lcm_catalogue_verify(entry, &error));
  g_assert_no_error(error);
  test_remove_tree(models);
}

/* A file missing from the second repository fails before a byte of the
 * first is written: every HEAD comes first. */
static void test_combined_missing_file(void) {
  g_autofree char *models = new_models_dir();
  g_autoptr(GPtrArray) tiny_catalogue = combined_catalogue();
  const LcmCatalogueEntry *entry = lcm_catalogue_find(tiny_catalogue, "tiny-missing-part");
  g_assert_nonnull(entry);
  fake_hub_set_mode(hub, FAKE_HUB_NORMAL);
  GError *error = NULL;
  g_assert_false(lcm_catalogue_download(entry, NULL, NULL, NULL, &error));
  test_expect_error(error, LCM_ERROR_NETWORK, "HTTP 404", "vae/no-such-file.safetensors",
                    TINY_BASE_REPO, NULL);
  g_clear_error(&error);
  assert_combined_not_installed(tiny_catalogue, entry);
  g_autofree char *unet_part = g_build_filename(models, ".tiny-missing-part.download", "unet",
                                                "diffusion_pytorch_model.safetensors.part", NULL);
  g_autofree char *unet_file = g_build_filename(models, ".tiny-missing-part.download", "unet",
                                                "diffusion_pytorch_model.safetensors", NULL);
  g_assert_false(g_file_test(unet_part, G_FILE_TEST_EXISTS));
  g_assert_false(g_file_test(unet_file, G_FILE_TEST_EXISTS));
  test_remove_tree(models);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  /* Only ever the loopback server: no proxy, no real cache. */
  g_unsetenv("http_proxy");
  g_unsetenv("https_proxy");
  g_unsetenv("all_proxy");
  g_setenv("no_proxy", "127.0.0.1", TRUE);
  g_unsetenv("HF_HOME");
  g_setenv("HF_HUB_CACHE", "/nonexistent/hf-cache", TRUE);
  hub = fake_hub_start();
  g_autofree char *tiny = lcm_find_data_file("tiny-lcm");
  fake_hub_add_repo(hub, "SimianLuo/LCM_Dreamshaper_v7", tiny);
  g_setenv("HF_ENDPOINT", fake_hub_endpoint(hub), TRUE);
  GError *error = NULL;
  catalogue = lcm_catalogue_load(NULL, &error);
  g_assert_no_error(error);

  g_test_add_func("/hub/catalogue", test_catalogue);
  g_test_add_func("/hub/endpoint", test_endpoint);
  g_test_add_func("/hub/download", test_download);
  g_test_add_func("/hub/resume-after-drop", test_resume_after_drop);
  g_test_add_func("/hub/resume-part-file", test_resume_part_file);
  g_test_add_func("/hub/wrong-checksum", test_wrong_checksum);
  g_test_add_func("/hub/not-found", test_not_found);
  g_test_add_func("/hub/server-error", test_server_error);
  g_test_add_func("/hub/offline", test_offline);
  g_test_add_func("/hub/disk-full", test_disk_full);
  g_test_add_func("/hub/cancel-slow-server", test_cancel_slow_server);
  g_test_add_func("/hub/hf-cache-discovery", test_hf_cache_discovery);
  g_test_add_func("/hub/sdxl-family", test_sdxl_family);
  g_test_add_func("/hub/combined-download", test_combined_download);
  g_test_add_func("/hub/combined-second-fails", test_combined_second_fails);
  g_test_add_func("/hub/combined-missing-file", test_combined_missing_file);
  int status = g_test_run();
  g_ptr_array_unref(catalogue);
  fake_hub_stop(hub);
  return status;
}
