/* gimp-lcm-cli: the command-line client of the core library, and the
 * reference client for tests and benchmarks. */
#include "cli.h"
#include "generate.h"
#include "golden.h"
#include "lcm.h"
#include "models.h"

#include <locale.h>
#include <stdio.h>
#include <string.h>

typedef int (*Command)(int argc, char **argv);

gboolean cli_parse_options(GOptionContext *context, int *argc, char ***argv) {
  GError *error = NULL;
  if (!g_option_context_parse(context, argc, argv, &error)) {
    g_printerr("%s\n", error->message);
    g_error_free(error);
    return FALSE;
  }
  return TRUE;
}

int cli_report_error(GError *error) {
  g_printerr("gimp-lcm-cli: %s\n", error->message);
  g_error_free(error);
  return 1;
}

char *cli_resolve_model(const char *given, GError **error) {
  gboolean is_test_model = FALSE;
  char *path = lcm_resolve(given, LCM_ASSET_MODEL, &is_test_model, error);
  if (path && is_test_model) {
    char *dir = lcm_models_dir();
    g_printerr("note: no model in %s; using the bundled tiny TEST model (random weights: its "
               "output is noise, not a picture). 'gimp-lcm-cli models get LCM_Dreamshaper_v7' "
               "downloads a real one\n",
               dir);
    g_free(dir);
  } else if (path && g_strcmp0(given, path) != 0) {
    g_printerr("model: %s\n", path);
  }
  return path;
}

static int cmd_golden(int argc, char **argv) {
  char *only_case = NULL, *out_dir = NULL, *precision = NULL;
  int chunk = 0;
  GOptionEntry entries[] = {
      {"case", 0, 0, G_OPTION_ARG_STRING, &only_case, "Run only this case", "NAME"},
      {"out", 0, 0, G_OPTION_ARG_FILENAME, &out_dir,
       "Write each case's outputs to DIR/<case>.safetensors", "DIR"},
      {"precision", 0, 0, G_OPTION_ARG_STRING, &precision, "fp32 (default) or bf16", "P"},
      {"attention-chunk", 0, 0, G_OPTION_ARG_INT, &chunk,
       "Query rows per attention block (0 = built-in)", "N"},
      G_OPTION_ENTRY_NULL};
  GOptionContext *context = g_option_context_new("CASES.json - run golden reference cases");
  g_option_context_add_main_entries(context, entries, NULL);
  int status = 2;
  if (cli_parse_options(context, &argc, &argv)) {
    GoldenOptions options = {.only_case = only_case,
                             .out_dir = out_dir,
                             .precision = LCM_PRECISION_FP32,
                             .attention_chunk = chunk};
    GError *error = NULL;
    if (argc != 2) {
      g_printerr(
          "usage: gimp-lcm-cli golden CASES.json [--case NAME] [--out DIR] [--precision P]\n");
    } else if (precision && !lcm_precision_parse(precision, &options.precision, &error)) {
      cli_report_error(error);
    } else {
      options.cases_json = argv[1];
      options.precision = lcm_precision_resolve(options.precision);
      if (options.precision == LCM_PRECISION_BF16 &&
          lcm_precision_resolve(LCM_PRECISION_AUTO) != LCM_PRECISION_BF16) {
        g_print("golden: skipped, this CPU cannot compute in bf16\n");
        status = 77; /* meson's "skipped" */
      } else {
        status = golden_run(&options);
      }
    }
  }
  g_option_context_free(context);
  g_free(only_case);
  g_free(out_dir);
  g_free(precision);
  return status;
}

static int cmd_encode(int argc, char **argv) {
  char *model_path = NULL, *precision_name = NULL;
  GOptionEntry entries[] = {
      {"model", 0, 0, G_OPTION_ARG_FILENAME, &model_path,
       "Model: path, catalogue name or Hub repo id", "MODEL"},
      {"precision", 0, 0, G_OPTION_ARG_STRING, &precision_name, "auto, fp32 or bf16", "P"},
      G_OPTION_ENTRY_NULL};
  GOptionContext *context = g_option_context_new("PROMPT - tokenize and encode a prompt");
  g_option_context_add_main_entries(context, entries, NULL);
  int status = 1;
  GError *error = NULL;
  LcmModel *model = NULL;
  LcmTokenizer *tok = NULL;
  LcmTextEncoder *enc = NULL;
  char *path = NULL;
  LcmPrecision precision = LCM_PRECISION_AUTO;
  if (!cli_parse_options(context, &argc, &argv) || argc != 2) {
    if (argc != 2) g_printerr("usage: gimp-lcm-cli encode PROMPT [--model PATH]\n");
    status = 2;
  } else if ((!precision_name || lcm_precision_parse(precision_name, &precision, &error)) &&
             (path = cli_resolve_model(model_path, &error)) &&
             (model = lcm_model_open(path, &error)) &&
             (tok = lcm_model_load_tokenizer(model, &error)) &&
             (enc = lcm_text_encoder_load(model, precision, &error))) {
    int32_t ids[LCM_CLIP_TOKENS];
    int n = lcm_tokenizer_encode(tok, argv[1], ids);
    printf("tokens (%d before truncation):", n);
    for (int i = 0; i < LCM_CLIP_TOKENS; i++) printf(" %d", ids[i]);
    printf("\n");
    int hidden = lcm_text_encoder_hidden_size(enc);
    float *emb = g_new(float, LCM_CLIP_TOKENS *hidden);
    gint64 start = g_get_monotonic_time();
    if (lcm_text_encoder_encode(enc, ids, 1, emb, &error)) {
      printf("embedding: [1, %d, %d] (%s, %.1f ms), first values: %.5f %.5f %.5f\n",
             LCM_CLIP_TOKENS, hidden, lcm_precision_name(lcm_precision_resolve(precision)),
             (g_get_monotonic_time() - start) / 1e3, emb[0], emb[1], emb[2]);
      status = 0;
    }
    g_free(emb);
  }
  if (error) cli_report_error(error);
  if (enc) lcm_text_encoder_free(enc);
  if (tok) lcm_tokenizer_free(tok);
  if (model) lcm_model_free(model);
  g_option_context_free(context);
  g_free(path);
  g_free(model_path);
  g_free(precision_name);
  return status;
}

static const struct {
  const char *name;
  Command run;
  const char *summary;
} commands[] = {
    {"txt2img", generate_txt2img, "make a picture from a prompt"},
    {"img2img", generate_img2img, "redraw a picture following a prompt"},
    {"inpaint", generate_inpaint, "repaint the masked part of a picture"},
    {"encode", cmd_encode, "tokenize and encode a prompt with the text encoder"},
    {"golden", cmd_golden, "run golden reference cases (cases.json)"},
    {"models", models_command, "list, download (get) or verify models of the catalogue"},
};

int main(int argc, char **argv) {
  /* The user's character set (so messages print as UTF-8 where the terminal
   * is), but C number syntax for every parse and print. */
  setlocale(LC_ALL, "");
  setlocale(LC_NUMERIC, "C");
  if (argc >= 2) {
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++)
      if (strcmp(argv[1], commands[i].name) == 0) {
        char *name = g_strdup_printf("gimp-lcm-cli %s", argv[1]);
        g_set_prgname(name);
        g_free(name);
        return commands[i].run(argc - 1, argv + 1);
      }
  }
  fprintf(stderr, "usage: gimp-lcm-cli COMMAND [OPTIONS]\n\ncommands:\n");
  for (size_t i = 0; i < G_N_ELEMENTS(commands); i++)
    fprintf(stderr, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fprintf(stderr, "\n'gimp-lcm-cli COMMAND --help' for a command's options.\n");
  return 2;
}
