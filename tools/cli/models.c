/* gimp-lcm-cli models list | get NAME | verify NAME: the catalogue, what is
 * present, downloads with a progress line on stderr. */
#include "models.h"
#include "cli.h"
#include "lcm.h"

#include <stdio.h>
#include <string.h>

static const char *kind_name(LcmAssetKind kind) {
  return kind == LCM_ASSET_LORA ? "lora" : kind == LCM_ASSET_TAESD ? "taesd" : "model";
}

static const char *where_name(LcmFoundWhere where) {
  return where == LCM_FOUND_MODELS_FOLDER ? "models folder"
         : where == LCM_FOUND_HF_CACHE    ? "HF cache"
                                          : "not downloaded";
}

static int list_models(const GPtrArray *catalogue) {
  g_autofree char *models = lcm_models_dir();
  g_autofree char *cache = lcm_hf_cache_dir();
  printf("models folder: %s\nHugging Face cache: %s\n\n", models, cache);
  g_autoptr(GPtrArray) found = lcm_discover(catalogue);
  for (guint i = 0; i < found->len; i++) {
    const LcmFoundModel *f = found->pdata[i];
    const LcmCatalogueEntry *entry = lcm_catalogue_find(catalogue, f->catalogue);
    printf("%-28s %-6s %-15s %s\n", f->name, kind_name(f->kind), where_name(f->where),
           f->path ? f->path
           : entry ? entry->description
                   : "");
  }
  for (guint i = 0; i < catalogue->len; i++) {
    const LcmCatalogueEntry *entry = catalogue->pdata[i];
    if (!entry->supported)
      printf("%-28s %-6s %-15s needs %s support, not in this build\n", entry->name,
             kind_name(entry->kind), "unavailable", entry->family);
  }
  /* Where the entries that combine repositories take their parts from. */
  gboolean header = FALSE;
  for (guint i = 0; i < catalogue->len; i++) {
    const LcmCatalogueEntry *entry = catalogue->pdata[i];
    if (!entry->supported || entry->n_sources < 2) continue;
    if (!header) printf("\nmade of several Hub repositories:\n");
    header = TRUE;
    printf("  %s:", entry->name);
    for (int s = 0; s < entry->n_sources; s++) {
      const LcmCatalogueSource *source = &entry->sources[s];
      printf("%s %s", s ? "," : "", source->repo);
      if (*source->into)
        printf(" (into %s/)", source->into);
      else if (s > 0)
        printf(" (the rest)");
    }
    printf("\n");
  }
  printf("\n'gimp-lcm-cli models get NAME' downloads a catalogue entry from %s.\n",
         "the Hugging Face Hub");
  return 0;
}

static void show_progress(const LcmDownloadProgress *p, gpointer user_data) {
  g_autofree char *text = lcm_download_progress_text(p);
  /* One line, rewritten in place. */
  g_printerr("\r%s: %s\033[K", (const char *)user_data, text);
}

static int get_model(const LcmCatalogueEntry *entry) {
  GError *error = NULL;
  g_autofree char *present = lcm_catalogue_locate(entry);
  if (present) {
    printf("%s is already present: %s\n", entry->name, present);
    return 0;
  }
  g_autofree char *endpoint = lcm_hub_endpoint();
  GString *from = g_string_new(NULL);
  for (int s = 0; s < entry->n_sources; s++)
    g_string_append_printf(from, "%s%s@%s", s ? " + " : "", entry->sources[s].repo,
                           entry->sources[s].revision);
  g_printerr("downloading %s (%s) from %s\n", entry->name, from->str, endpoint);
  g_string_free(from, TRUE);
  gboolean ok = lcm_catalogue_download(entry, show_progress, entry->name, NULL, &error);
  g_printerr("\n");
  if (!ok) return cli_report_error(error);
  g_autofree char *path = lcm_catalogue_locate(entry);
  printf("%s installed: %s\n", entry->name, path);
  return 0;
}

static int verify_model(const LcmCatalogueEntry *entry) {
  GError *error = NULL;
  if (!lcm_catalogue_verify(entry, &error)) return cli_report_error(error);
  printf("%s: every file matches its recorded size and sha256\n", entry->name);
  return 0;
}

/* Runs "list", or "get" / "verify" on name; the exit status. */
static int run_action(const char *action, const char *name) {
  GError *error = NULL;
  g_autoptr(GPtrArray) catalogue = lcm_catalogue_load(NULL, &error);
  if (!catalogue) return cli_report_error(error);
  if (!name) return list_models(catalogue);
  const LcmCatalogueEntry *entry = lcm_catalogue_find(catalogue, name);
  if (!entry) {
    g_printerr("gimp-lcm-cli: %s is not in the catalogue ('gimp-lcm-cli models list' shows it)\n",
               name);
    return 1;
  }
  return !strcmp(action, "get") ? get_model(entry) : verify_model(entry);
}

int models_command(int argc, char **argv) {
  GOptionContext *context = g_option_context_new(
      "list | get NAME | verify NAME - the model catalogue and downloads from the Hugging Face "
      "Hub");
  g_option_context_set_description(
      context, "NAME is a catalogue name or its Hub repository id. Downloads go into the models "
               "folder ($GIMP_LCM_MODELS); models already in the Hugging Face cache are used "
               "from there. HF_ENDPOINT sets another Hub address (a mirror).\n");
  int status = 2;
  if (cli_parse_options(context, &argc, &argv)) {
    const char *action = argc >= 2 ? argv[1] : "";
    gboolean needs_name = !strcmp(action, "get") || !strcmp(action, "verify");
    if ((needs_name || !strcmp(action, "list")) && argc == (needs_name ? 3 : 2))
      status = run_action(action, needs_name ? argv[2] : NULL);
    else
      g_printerr("usage: gimp-lcm-cli models list | get NAME | verify NAME\n");
  }
  g_option_context_free(context);
  return status;
}
