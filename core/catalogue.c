/* The catalogue of downloadable models, discovery of the models present in
 * the models folder and the Hugging Face cache, and the one resolver of model
 * names. The cache is only ever read. */
#include "lcm.h"
#include "safetensors.h"

#include <json-glib/json-glib.h>
#include <string.h>

/* The model families this build opens. */
static const char *const supported_families[] = {"sd15", "sdxl"};

static gboolean family_supported(const char *family) {
  for (size_t i = 0; i < G_N_ELEMENTS(supported_families); i++)
    if (!g_strcmp0(family, supported_families[i])) return TRUE;
  return FALSE;
}

static void entry_free(gpointer data) {
  LcmCatalogueEntry *entry = data;
  g_free(entry->name);
  g_free(entry->repo);
  g_free(entry->revision);
  g_free(entry->family);
  g_free(entry->install);
  g_free(entry->description);
  g_strfreev(entry->files);
  for (int i = 0; i < entry->n_sources; i++) {
    g_free(entry->sources[i].repo);
    g_free(entry->sources[i].revision);
    g_free(entry->sources[i].into);
    g_strfreev(entry->sources[i].files);
  }
  g_free(entry->sources);
  g_free(entry);
}

static gboolean parse_kind(const char *name, LcmAssetKind *kind) {
  static const char *const names[] = {
      [LCM_ASSET_MODEL] = "model", [LCM_ASSET_LORA] = "lora", [LCM_ASSET_TAESD] = "taesd"};
  for (size_t i = 0; i < G_N_ELEMENTS(names); i++)
    if (!g_strcmp0(name, names[i])) {
      *kind = (LcmAssetKind)i;
      return TRUE;
    }
  return FALSE;
}

/* A repository path or install folder that stays inside its folder. */
static gboolean is_safe_relative_path(const char *path) {
  if (!path || !*path || g_path_is_absolute(path) || strchr(path, '\\')) return FALSE;
  g_auto(GStrv) parts = g_strsplit(path, "/", -1);
  for (char **p = parts; *p; p++)
    if (!**p || !strcmp(*p, ".") || !strcmp(*p, "..") || **p == '.') return FALSE;
  return TRUE;
}

static const char *string_member(JsonObject *object, const char *name) {
  JsonNode *node = json_object_get_member(object, name);
  return node && JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_STRING
             ? json_node_get_string(node)
             : NULL;
}

/* One source: {"repo", "revision", "files", optional "into"} (or, for the
 * single-repository form, the same members of the entry itself). Its install
 * paths are added to `installed`, which refuses a path given twice. */
static gboolean parse_source(JsonObject *object, const char *path, const char *name,
                             gboolean allow_into, LcmCatalogueSource *source, GHashTable *installed,
                             GStrvBuilder *install_paths, GError **error) {
  const char *repo = string_member(object, "repo");
  const char *revision = string_member(object, "revision");
  const char *into = allow_into ? string_member(object, "into") : NULL;
  JsonNode *files_node = json_object_get_member(object, "files");
  JsonArray *files =
      files_node && JSON_NODE_HOLDS_ARRAY(files_node) ? json_node_get_array(files_node) : NULL;
  if (!repo || !revision || !*revision || !files || json_array_get_length(files) == 0 ||
      strchr(repo, '/') == NULL || !is_safe_relative_path(repo) ||
      (json_object_has_member(object, "into") && allow_into && !into) ||
      (into && *into && !is_safe_relative_path(into))) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: entry %s needs a repo \"ORG/NAME\", a revision and a non-empty \"files\" "
                "list%s",
                path, name, allow_into ? " per source (\"into\": a relative folder)" : "");
    return FALSE;
  }
  GStrvBuilder *builder = g_strv_builder_new();
  for (guint i = 0; i < json_array_get_length(files); i++) {
    JsonNode *node = json_array_get_element(files, i);
    const char *file =
        JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_STRING
            ? json_node_get_string(node)
            : NULL;
    if (!is_safe_relative_path(file)) {
      g_strv_builder_unref(builder);
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                  "%s: entry %s lists a file that is not a plain relative path", path, name);
      return FALSE;
    }
    char *install_path = into && *into ? g_build_filename(into, file, NULL) : g_strdup(file);
    if (!g_hash_table_add(installed, install_path)) {
      g_strv_builder_unref(builder);
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: entry %s puts two files at %s", path,
                  name, install_path);
      return FALSE;
    }
    g_strv_builder_add(builder, file);
    g_strv_builder_add(install_paths, install_path);
  }
  source->repo = g_strdup(repo);
  source->revision = g_strdup(revision);
  source->into = g_strdup(into ? into : "");
  source->files = g_strv_builder_end(builder);
  g_strv_builder_unref(builder);
  return TRUE;
}

static LcmCatalogueEntry *parse_entry(JsonObject *object, const char *path, guint index,
                                      GError **error) {
  const char *fields[] = {"name", "family", "install", "kind"};
  const char *values[G_N_ELEMENTS(fields)];
  for (size_t i = 0; i < G_N_ELEMENTS(fields); i++) {
    values[i] = string_member(object, fields[i]);
    if (!values[i] || !*values[i]) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: entry %u has no \"%s\" string", path,
                  index, fields[i]);
      return NULL;
    }
  }
  const char *name = values[0];
  LcmAssetKind kind;
  if (!parse_kind(values[3], &kind)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: entry %s has kind \"%s\" (model, lora or taesd expected)", path, name,
                values[3]);
    return NULL;
  }
  if (!is_safe_relative_path(values[2])) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: entry %s needs a relative install folder",
                path, name);
    return NULL;
  }
  /* "base" named the repository holding what a UNet-only entry lacks, before
   * entries could take files from several repositories. */
  if (json_object_has_member(object, "base")) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: entry %s has a \"base\": list every repository it takes files from under "
                "\"sources\" instead",
                path, name);
    return NULL;
  }
  JsonNode *sources_node = json_object_get_member(object, "sources");
  gboolean single = sources_node == NULL;
  JsonArray *sources = sources_node && JSON_NODE_HOLDS_ARRAY(sources_node)
                           ? json_node_get_array(sources_node)
                           : NULL;
  if (!single &&
      (!sources || json_array_get_length(sources) == 0 || json_object_has_member(object, "repo") ||
       json_object_has_member(object, "revision") || json_object_has_member(object, "files"))) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: entry %s needs either \"repo\", \"revision\" and \"files\", or a non-empty "
                "\"sources\" list, not both",
                path, name);
    return NULL;
  }
  guint n = single ? 1 : json_array_get_length(sources);
  LcmCatalogueEntry *entry = g_new0(LcmCatalogueEntry, 1);
  entry->sources = g_new0(LcmCatalogueSource, n);
  g_autoptr(GHashTable) installed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  GStrvBuilder *install_paths = g_strv_builder_new();
  gboolean ok = TRUE;
  for (guint i = 0; ok && i < n; i++) {
    JsonNode *node = single ? NULL : json_array_get_element(sources, i);
    JsonObject *source = single                         ? object
                         : JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node)
                                                        : NULL;
    if (!source) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: entry %s: source %u is not an object",
                  path, name, i);
      ok = FALSE;
      break;
    }
    ok = parse_source(source, path, name, !single, &entry->sources[i], installed, install_paths,
                      error);
    if (ok) entry->n_sources++;
  }
  entry->files = g_strv_builder_end(install_paths);
  g_strv_builder_unref(install_paths);
  entry->name = g_strdup(name);
  entry->family = g_strdup(values[1]);
  entry->install = g_strdup(values[2]);
  entry->kind = kind;
  entry->description =
      g_strdup(json_object_get_string_member_with_default(object, "description", ""));
  if (!ok) {
    entry_free(entry);
    return NULL;
  }
  entry->repo = g_strdup(entry->sources[0].repo);
  entry->revision = g_strdup(entry->sources[0].revision);
  entry->supported = family_supported(entry->family);
  return entry;
}

GPtrArray *lcm_catalogue_load(const char *path, GError **error) {
  g_autofree char *default_path = path ? NULL : lcm_find_data_file("models.json");
  if (!path) path = default_path;
  if (!path) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                "the model catalogue models.json is not installed (reinstall gimp-lcm)");
    return NULL;
  }
  g_autoptr(JsonParser) parser = json_parser_new();
  GError *parse_error = NULL;
  if (!json_parser_load_from_file(parser, path, &parse_error)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: %s", path, parse_error->message);
    g_error_free(parse_error);
    return NULL;
  }
  JsonNode *root = json_parser_get_root(parser);
  JsonObject *object = root && JSON_NODE_HOLDS_OBJECT(root) ? json_node_get_object(root) : NULL;
  JsonNode *models = object ? json_object_get_member(object, "models") : NULL;
  if (!models || !JSON_NODE_HOLDS_ARRAY(models)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: no \"models\" list", path);
    return NULL;
  }
  JsonArray *array = json_node_get_array(models);
  GPtrArray *catalogue = g_ptr_array_new_with_free_func(entry_free);
  for (guint i = 0; i < json_array_get_length(array); i++) {
    JsonNode *node = json_array_get_element(array, i);
    LcmCatalogueEntry *entry = JSON_NODE_HOLDS_OBJECT(node)
                                   ? parse_entry(json_node_get_object(node), path, i, error)
                                   : NULL;
    if (!entry) {
      if (error && !*error)
        g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: entry %u is not an object", path, i);
      g_ptr_array_unref(catalogue);
      return NULL;
    }
    g_ptr_array_add(catalogue, entry);
  }
  return catalogue;
}

const LcmCatalogueEntry *lcm_catalogue_find(const GPtrArray *catalogue, const char *name) {
  for (guint i = 0; catalogue && name && i < catalogue->len; i++) {
    const LcmCatalogueEntry *entry = catalogue->pdata[i];
    if (!g_ascii_strcasecmp(entry->name, name) || !g_ascii_strcasecmp(entry->repo, name))
      return entry;
  }
  return NULL;
}

char *lcm_catalogue_install_dir(const LcmCatalogueEntry *entry) {
  g_autofree char *dir = lcm_models_dir();
  return g_build_filename(dir, entry->install, NULL);
}

char *lcm_hf_cache_dir(void) {
  const char *hub_cache = g_getenv("HF_HUB_CACHE");
  if (hub_cache && *hub_cache) return g_strdup(hub_cache);
  const char *home = g_getenv("HF_HOME");
  if (home && *home) return g_build_filename(home, "hub", NULL);
  return g_build_filename(g_get_home_dir(), ".cache", "huggingface", "hub", NULL);
}

char *lcm_hub_endpoint(void) {
  const char *endpoint = g_getenv("HF_ENDPOINT");
  char *url = g_strdup(endpoint && *endpoint ? endpoint : "https://huggingface.co");
  for (size_t n = strlen(url); n > 0 && url[n - 1] == '/'; n--) url[n - 1] = '\0';
  return url;
}

/* ---- What a file or folder is ---------------------------------------------- */

/* A checkpoint holds a UNet; LoRAs and TAESD files beside it do not. */
static gboolean is_checkpoint(const char *path) {
  StFile *file = st_open(path, NULL);
  gboolean yes = FALSE;
  for (guint i = 0; file && !yes && i < st_count(file); i++)
    yes = g_str_has_prefix(st_tensor_at(file, i)->name, "model.diffusion_model.");
  if (file) st_close(file);
  return yes;
}

static gboolean is_lora(const char *path) {
  char **networks = lcm_lora_networks(path, NULL);
  g_strfreev(networks);
  return networks != NULL;
}

static int compare_strings(gconstpointer a, gconstpointer b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The visible names in a folder, sorted; empty when it cannot be read. */
static GPtrArray *list_dir(const char *dir) {
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  GDir *d = g_dir_open(dir, 0, NULL);
  for (const char *name; d && (name = g_dir_read_name(d));)
    if (name[0] != '.') g_ptr_array_add(names, g_strdup(name));
  if (d) g_dir_close(d);
  g_ptr_array_sort(names, compare_strings);
  return names;
}

/* The first LoRA .safetensors directly in dir, or NULL. */
static char *lora_file_in(const char *dir) {
  g_autoptr(GPtrArray) names = list_dir(dir);
  for (guint i = 0; i < names->len; i++) {
    if (!g_str_has_suffix(names->pdata[i], ".safetensors")) continue;
    char *path = g_build_filename(dir, names->pdata[i], NULL);
    if (is_lora(path)) return path;
    g_free(path);
  }
  return NULL;
}

/* A diffusers pipeline (SD1.5's or SDXL's ...XLPipeline: both open). */
static gboolean is_pipeline_folder(const char *dir) {
  g_autofree char *index = g_build_filename(dir, "model_index.json", NULL);
  return g_file_test(index, G_FILE_TEST_IS_REGULAR);
}

/* madebyollin's TAESD or TAESDXL folder. */
static gboolean is_original_taesd_folder(const char *dir) {
  static const char *const decoders[] = {"taesd_decoder.safetensors",
                                         "taesdxl_decoder.safetensors"};
  for (size_t i = 0; i < G_N_ELEMENTS(decoders); i++) {
    g_autofree char *decoder = g_build_filename(dir, decoders[i], NULL);
    if (g_file_test(decoder, G_FILE_TEST_IS_REGULAR)) return TRUE;
  }
  return FALSE;
}

/* What `path` is, and the path its loader takes (a LoRA folder's file); FALSE
 * when it is none of the kinds. */
static gboolean classify(const char *path, LcmAssetKind *kind, char **usable) {
  if (g_file_test(path, G_FILE_TEST_IS_DIR)) {
    if (is_pipeline_folder(path)) {
      *kind = LCM_ASSET_MODEL;
      *usable = g_strdup(path);
      return TRUE;
    }
    if (is_original_taesd_folder(path)) {
      *kind = LCM_ASSET_TAESD;
      *usable = g_strdup(path);
      return TRUE;
    }
    *usable = lora_file_in(path);
    *kind = LCM_ASSET_LORA;
    return *usable != NULL;
  }
  if (!g_str_has_suffix(path, ".safetensors") || !g_file_test(path, G_FILE_TEST_IS_REGULAR))
    return FALSE;
  if (is_checkpoint(path))
    *kind = LCM_ASSET_MODEL;
  else if (is_lora(path))
    *kind = LCM_ASSET_LORA;
  else
    return FALSE;
  *usable = g_strdup(path);
  return TRUE;
}

/* ---- The Hugging Face cache --------------------------------------------------- */

/* models--ORG--NAME for a repo id. */
static char *cache_repo_dir(const char *cache, const char *repo) {
  g_auto(GStrv) parts = g_strsplit(repo, "/", -1);
  g_autofree char *joined = g_strjoinv("--", parts);
  g_autofree char *name = g_strconcat("models--", joined, NULL);
  return g_build_filename(cache, name, NULL);
}

/* The snapshot folder of a cached repo at `revision` (a commit, or a ref
 * such as "main" read from refs/), or NULL. */
static char *cache_snapshot(const char *repo_dir, const char *revision) {
  g_autofree char *ref = g_build_filename(repo_dir, "refs", revision, NULL);
  g_autofree char *commit = NULL;
  if (g_file_get_contents(ref, &commit, NULL, NULL)) g_strstrip(commit);
  const char *name = commit && *commit ? commit : revision;
  if (strchr(name, '/') || name[0] == '.') return NULL;
  char *snapshot = g_build_filename(repo_dir, "snapshots", name, NULL);
  if (g_file_test(snapshot, G_FILE_TEST_IS_DIR)) return snapshot;
  g_free(snapshot);
  return NULL;
}

/* A cached entry's snapshot: its revision, else what main points at (a
 * pinned commit that diffusers users fetched as main before or after it). */
static char *cache_entry_snapshot(const char *repo_dir, const LcmCatalogueEntry *entry) {
  char *snapshot = cache_snapshot(repo_dir, entry->revision);
  return snapshot ? snapshot : cache_snapshot(repo_dir, "main");
}

/* The path an entry's loader takes inside a folder holding its files. */
static char *entry_usable_path(const LcmCatalogueEntry *entry, const char *dir) {
  return entry->kind == LCM_ASSET_LORA ? g_build_filename(dir, entry->files[0], NULL)
                                       : g_strdup(dir);
}

static gboolean has_all_files(const LcmCatalogueEntry *entry, const char *dir) {
  for (char **file = entry->files; *file; file++) {
    g_autofree char *path = g_build_filename(dir, *file, NULL);
    if (!g_file_test(path, G_FILE_TEST_IS_REGULAR)) return FALSE; /* follows the blob links */
  }
  return TRUE;
}

/* Whether the entry's files are one cached repository's snapshot as they
 * are: one source, put at the install folder's root. */
static gboolean cache_can_hold(const LcmCatalogueEntry *entry) {
  return entry->n_sources == 1 && !*entry->sources[0].into;
}

char *lcm_catalogue_locate(const LcmCatalogueEntry *entry) {
  g_autofree char *installed = lcm_catalogue_install_dir(entry);
  if (has_all_files(entry, installed)) return entry_usable_path(entry, installed);
  if (!cache_can_hold(entry)) return NULL;
  g_autofree char *cache = lcm_hf_cache_dir();
  g_autofree char *repo_dir = cache_repo_dir(cache, entry->repo);
  g_autofree char *snapshot = cache_entry_snapshot(repo_dir, entry);
  if (!snapshot || !has_all_files(entry, snapshot)) return NULL;
  return entry_usable_path(entry, snapshot);
}

/* ---- Discovery --------------------------------------------------------------- */

static void found_free(gpointer data) {
  LcmFoundModel *found = data;
  g_free(found->name);
  g_free(found->path);
  g_free(found->catalogue);
  g_free(found);
}

static void add_found(GPtrArray *list, const char *name, char *path, const char *catalogue,
                      LcmAssetKind kind, LcmFoundWhere where) {
  LcmFoundModel *found = g_new0(LcmFoundModel, 1);
  found->name = g_strdup(name);
  found->path = path;
  found->catalogue = g_strdup(catalogue);
  found->kind = kind;
  found->where = where;
  g_ptr_array_add(list, found);
}

/* The catalogue entry that installs into `name` in the models folder, or NULL. */
static const LcmCatalogueEntry *entry_installed_at(const GPtrArray *catalogue, const char *name) {
  for (guint i = 0; catalogue && i < catalogue->len; i++) {
    const LcmCatalogueEntry *entry = catalogue->pdata[i];
    if (!strcmp(entry->install, name)) return entry;
  }
  return NULL;
}

static void discover_models_folder(const GPtrArray *catalogue, GPtrArray *list) {
  g_autofree char *dir = lcm_models_dir();
  g_autoptr(GPtrArray) names = list_dir(dir);
  for (guint i = 0; i < names->len; i++) {
    const char *name = names->pdata[i];
    g_autofree char *path = g_build_filename(dir, name, NULL);
    LcmAssetKind kind;
    char *usable = NULL;
    if (!classify(path, &kind, &usable)) continue;
    const LcmCatalogueEntry *entry = entry_installed_at(catalogue, name);
    add_found(list, entry ? entry->name : name, usable, entry ? entry->name : NULL, kind,
              LCM_FOUND_MODELS_FOLDER);
  }
}

static void discover_cache(const GPtrArray *catalogue, GPtrArray *list) {
  g_autofree char *cache = lcm_hf_cache_dir();
  g_autoptr(GPtrArray) names = list_dir(cache);
  for (guint i = 0; i < names->len; i++) {
    const char *name = names->pdata[i];
    if (!g_str_has_prefix(name, "models--")) continue;
    g_auto(GStrv) parts = g_strsplit(name + strlen("models--"), "--", 2);
    if (g_strv_length(parts) != 2) continue;
    g_autofree char *repo = g_strjoin("/", parts[0], parts[1], NULL);
    g_autofree char *repo_dir = g_build_filename(cache, name, NULL);
    const LcmCatalogueEntry *entry = lcm_catalogue_find(catalogue, repo);
    char *usable = NULL;
    LcmAssetKind kind;
    if (entry) {
      /* Only part of an entry that combines repositories (lcm-ssd-1b's UNet):
       * not usable on its own. */
      if (!entry->supported || !cache_can_hold(entry)) continue;
      g_autofree char *snapshot = cache_entry_snapshot(repo_dir, entry);
      if (!snapshot || !has_all_files(entry, snapshot)) continue;
      usable = entry_usable_path(entry, snapshot);
      kind = entry->kind;
    } else {
      g_autofree char *snapshot = cache_snapshot(repo_dir, "main");
      if (!snapshot || !classify(snapshot, &kind, &usable)) continue;
    }
    add_found(list, entry ? entry->name : repo, usable, entry ? entry->name : NULL, kind,
              LCM_FOUND_HF_CACHE);
  }
}

static gboolean listed(const GPtrArray *list, const char *catalogue_name) {
  for (guint i = 0; i < list->len; i++) {
    const LcmFoundModel *found = list->pdata[i];
    if (!g_strcmp0(found->catalogue, catalogue_name)) return TRUE;
  }
  return FALSE;
}

GPtrArray *lcm_discover(const GPtrArray *catalogue) {
  GPtrArray *list = g_ptr_array_new_with_free_func(found_free);
  discover_models_folder(catalogue, list);
  discover_cache(catalogue, list);
  for (guint i = 0; catalogue && i < catalogue->len; i++) {
    const LcmCatalogueEntry *entry = catalogue->pdata[i];
    if (entry->supported && !listed(list, entry->name))
      add_found(list, entry->name, NULL, entry->name, entry->kind, LCM_FOUND_NOT_DOWNLOADED);
  }
  return list;
}

/* ---- Resolving names ----------------------------------------------------------- */

char *lcm_default_model(gboolean *is_test_model) {
  g_autoptr(GPtrArray) catalogue = lcm_catalogue_load(NULL, NULL);
  g_autoptr(GPtrArray) found = lcm_discover(catalogue);
  char *chosen = NULL;
  /* The models folder first; from the cache only catalogue models, which
   * are known to run. */
  for (guint i = 0; !chosen && i < found->len; i++) {
    const LcmFoundModel *f = found->pdata[i];
    if (f->kind == LCM_ASSET_MODEL && f->path &&
        (f->where == LCM_FOUND_MODELS_FOLDER || f->catalogue))
      chosen = g_strdup(f->path);
  }
  if (is_test_model) *is_test_model = chosen == NULL;
  return chosen ? chosen : lcm_find_data_file("tiny-lcm");
}

static const char *kind_noun(LcmAssetKind kind) {
  return kind == LCM_ASSET_LORA ? "LoRA" : kind == LCM_ASSET_TAESD ? "TAESD" : "model";
}

/* A path given for `kind`: a LoRA folder stands for its LoRA file. */
static char *usable_path(const char *path, LcmAssetKind kind) {
  if (kind == LCM_ASSET_LORA && g_file_test(path, G_FILE_TEST_IS_DIR)) return lora_file_in(path);
  return g_strdup(path);
}

char *lcm_resolve(const char *spec, LcmAssetKind kind, gboolean *is_test_model, GError **error) {
  if (is_test_model) *is_test_model = FALSE;
  if (!spec || !*spec) {
    if (kind == LCM_ASSET_MODEL) {
      char *path = lcm_default_model(is_test_model);
      if (!path) {
        g_autofree char *dir = lcm_models_dir();
        g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                    "no model found: put one into %s, download one (gimp-lcm-cli models get "
                    "LCM_Dreamshaper_v7), or name one",
                    dir);
      }
      return path;
    }
    lcm_error_invalid(error, "no %s named", kind_noun(kind));
    return NULL;
  }
  char *path = NULL;
  if (g_file_test(spec, G_FILE_TEST_EXISTS) && (path = usable_path(spec, kind))) return path;

  g_autoptr(GPtrArray) catalogue = lcm_catalogue_load(NULL, NULL);
  const LcmCatalogueEntry *entry = lcm_catalogue_find(catalogue, spec);
  if (entry) {
    if ((path = lcm_catalogue_locate(entry))) return path;
    if (entry->supported)
      g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                  "%s is not downloaded yet: use Download… in the dialog or run \"gimp-lcm-cli "
                  "models get %s\"",
                  entry->name, entry->name);
    else
      g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                  "%s (%s family) is not supported by this build of gimp-lcm", entry->name,
                  entry->family);
    return NULL;
  }
  /* A name inside the models folder, a Hub repo id in the cache or there. */
  g_autofree char *models = lcm_models_dir();
  g_autofree char *in_models = g_build_filename(models, spec, NULL);
  if (!g_path_is_absolute(spec) && g_file_test(in_models, G_FILE_TEST_EXISTS) &&
      (path = usable_path(in_models, kind)))
    return path;
  g_autoptr(GPtrArray) found = lcm_discover(NULL);
  for (guint i = 0; i < found->len; i++) {
    const LcmFoundModel *f = found->pdata[i];
    if (f->kind == kind && f->path && !g_ascii_strcasecmp(f->name, spec)) return g_strdup(f->path);
  }
  if (strchr(spec, '/') && !g_path_is_absolute(spec)) {
    g_autofree char *tail = g_path_get_basename(spec);
    g_autofree char *by_name = g_build_filename(models, tail, NULL);
    if (g_file_test(by_name, G_FILE_TEST_EXISTS) && (path = usable_path(by_name, kind)))
      return path;
  }
  if (g_path_is_absolute(spec) || g_str_has_prefix(spec, "./") || g_str_has_prefix(spec, "../")) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "%s: no such file or folder", spec);
    return NULL;
  }
  g_autofree char *cache = lcm_hf_cache_dir();
  g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
              "no %s \"%s\": it is not a file or folder, not in the catalogue (gimp-lcm-cli "
              "models list), and no such Hub repository is in %s or %s",
              kind_noun(kind), spec, cache, models);
  return NULL;
}
