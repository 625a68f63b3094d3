/* The CLIP tokenizer against the golden case "tokenizer" (HF CLIPTokenizer
 * with ftfy on 40 prompts), plus ftfy rules the prompts do not reach,
 * truncation, custom vocabularies, the bundled vocabulary and load errors. */
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <string.h>

/* The golden model's tokenizer, loaded once (loading takes a while under ASan). */
static LcmTokenizer *golden;

static LcmTokenizer *golden_tokenizer(void) {
  if (golden) return golden;
  g_autofree char *vocab = test_data_path("golden/tiny-lcm/tokenizer/vocab.json");
  g_autofree char *merges = test_data_path("golden/tiny-lcm/tokenizer/merges.txt");
  g_autoptr(GError) error = NULL;
  golden = lcm_tokenizer_new(vocab, merges, &error);
  g_assert_no_error(error);
  g_assert_nonnull(golden);
  return golden;
}

static void test_golden_prompts(void) {
  g_autofree char *prompts_path = test_data_path("golden/tokenizer_prompts.json");
  g_autofree char *golden_path = test_data_path("golden/cases/tokenizer.safetensors");
  g_autoptr(JsonParser) parser = json_parser_new();
  g_autoptr(GError) error = NULL;
  g_assert_true(json_parser_load_from_file(parser, prompts_path, &error));
  JsonArray *prompts = json_node_get_array(json_parser_get_root(parser));
  StFile *file = st_open(golden_path, &error);
  g_assert_no_error(error);
  const StTensor *ids = st_find(file, "input_ids");
  const StTensor *counts = st_find(file, "n_tokens_untruncated");
  guint n = json_array_get_length(prompts);
  g_assert_nonnull(ids);
  g_assert_nonnull(counts);
  g_assert_cmpint(ids->dtype, ==, ST_I32);
  g_assert_cmpint(counts->dtype, ==, ST_I32);
  g_assert_cmpint(ids->ndims, ==, 2);
  g_assert_cmpint(ids->shape[0], ==, n);
  g_assert_cmpint(ids->shape[1], ==, LCM_CLIP_TOKENS);
  g_assert_cmpint(st_numel(counts), ==, n);

  LcmTokenizer *tokenizer = golden_tokenizer();
  const int32_t *expected = ids->data;
  const int32_t *expected_counts = counts->data;
  for (guint i = 0; i < n; i++) {
    const char *prompt =
        json_object_get_string_member(json_array_get_object_element(prompts, i), "prompt");
    int32_t got[LCM_CLIP_TOKENS];
    int count = lcm_tokenizer_encode(tokenizer, prompt, got);
    g_test_message("prompt %u: %s", i, prompt);
    g_assert_cmpint(count, ==, expected_counts[i]);
    g_assert_cmpmem(got, sizeof got, expected + (size_t)i * LCM_CLIP_TOKENS, sizeof got);
  }
  st_close(file);
}

static void assert_same_ids(LcmTokenizer *tokenizer, const char *a, const char *b) {
  int32_t ids_a[LCM_CLIP_TOKENS], ids_b[LCM_CLIP_TOKENS];
  int count_a = lcm_tokenizer_encode(tokenizer, a, ids_a);
  int count_b = lcm_tokenizer_encode(tokenizer, b, ids_b);
  g_test_message("'%s' vs '%s'", a, b);
  g_assert_cmpint(count_a, ==, count_b);
  g_assert_cmpmem(ids_a, sizeof ids_a, ids_b, sizeof ids_b);
}

static void assert_different_ids(LcmTokenizer *tokenizer, const char *a, const char *b) {
  int32_t ids_a[LCM_CLIP_TOKENS], ids_b[LCM_CLIP_TOKENS];
  lcm_tokenizer_encode(tokenizer, a, ids_a);
  lcm_tokenizer_encode(tokenizer, b, ids_b);
  g_assert_true(memcmp(ids_a, ids_b, sizeof ids_a) != 0);
}

/* ftfy and str.lower() rules beyond the golden prompts. */
static void test_text_cleanup(void) {
  LcmTokenizer *tokenizer = golden_tokenizer();
  /* HTML: uppercase spellings, hex and Windows-1252 references, nesting */
  assert_same_ids(tokenizer, "caf&EACUTE; &#x41;&#66;c &#150; &amp;#38;", "café abc – &");
  assert_same_ids(tokenizer, "&#0; &#xD800; &#1; x", "\uFFFD \uFFFD x");
  /* unknown or malformed entities stay */
  assert_same_ids(tokenizer, "&bogus; &#12ab;", "& bogus ; &# 12 ab ;");
  /* a '<' stops entity decoding from its line on */
  assert_different_ids(tokenizer, "<b> &amp;", "<b> &");
  assert_same_ids(tokenizer, "&amp;\n<b>\n&amp;", "&\n<b>\n& amp ;");
  /* C1 controls as Windows-1252, ligatures, terminal escapes, controls */
  assert_same_ids(tokenizer, "\xc2\x96 \xc2\x93x\xc2\x94 \u0149", "– \"x\" 'n");
  assert_same_ids(tokenizer, "\x1b[1;31mred\x1b[0m \x1b\x7f\u200e\uFEFFx", "red \u200ex");
  assert_same_ids(tokenizer, "\uFF76\uFF9E \u3000\uFF21", "\u30AC a");
  /* Python's str.lower(): final sigma, dotted capital I, ß */
  assert_same_ids(tokenizer, "ΟΔΥΣΣΕΥΣ Σ", "οδυσσευς σ");
  assert_same_ids(tokenizer, "İ STRASSE ẞ", "i\u0307 strasse ß");
  assert_different_ids(tokenizer, "ΟΔΥΣΣΕΥΣ", "οδυσσευσ");
  /* the regex's case folding: an apostrophe and a long s are a contraction */
  assert_different_ids(tokenizer, "it'\u017F", "it' \u017F");
  /* invalid UTF-8 is repaired, not a crash */
  int32_t ids[LCM_CLIP_TOKENS];
  g_assert_cmpint(lcm_tokenizer_encode(tokenizer, "bad \xff\xfe utf8 \xc3", ids), >, 2);
}

static void test_truncation_and_padding(void) {
  LcmTokenizer *tokenizer = golden_tokenizer();
  int32_t ids[LCM_CLIP_TOKENS];
  g_autoptr(GString) prompt = g_string_new(NULL);
  for (int i = 0; i < 90; i++) g_string_append(prompt, "cat, ");
  /* "cat" "," per repetition */
  g_assert_cmpint(lcm_tokenizer_encode(tokenizer, prompt->str, ids), ==, 180);
  g_assert_cmpint(ids[0], ==, LCM_CLIP_BOS);
  g_assert_cmpint(ids[LCM_CLIP_TOKENS - 1], ==, LCM_CLIP_EOS);
  for (int i = 1; i < LCM_CLIP_TOKENS - 1; i++) g_assert_cmpint(ids[i], !=, LCM_CLIP_EOS);
  g_assert_cmpint(ids[1], ==, ids[3]);
  g_assert_cmpint(ids[1], ==, ids[LCM_CLIP_TOKENS - 2]); /* the 75th token is the 38th "cat" */

  for (int pass = 0; pass < 2; pass++) {
    g_assert_cmpint(lcm_tokenizer_encode(tokenizer, pass ? NULL : " \t\n ", ids), ==, 0);
    g_assert_cmpint(ids[0], ==, LCM_CLIP_BOS);
    for (int i = 1; i < LCM_CLIP_TOKENS; i++) g_assert_cmpint(ids[i], ==, LCM_CLIP_EOS);
  }
}

/* Word i of a list of distinct lowercase words ("b", "c", ..., "ba", ...). */
static void make_word(int i, char word[16]) {
  char reversed[16];
  int n = 0;
  do {
    reversed[n++] = (char)('a' + i % 26);
    i /= 26;
  } while (i > 0);
  for (int k = 0; k < n; k++) word[k] = reversed[n - 1 - k];
  word[n] = '\0';
}

#define CACHE_WORDS 9000 /* more than the BPE cache keeps */
#define THREADS 3

typedef struct {
  const int32_t *expected; /* CACHE_WORDS x LCM_CLIP_TOKENS */
  int first;
  gboolean all_equal;
} EncodeJob;

static gpointer encode_words(gpointer data) {
  EncodeJob *job = data;
  job->all_equal = TRUE;
  for (int k = 0; k < CACHE_WORDS / 4; k++) {
    int i = (job->first + 7 * k) % CACHE_WORDS;
    char word[16];
    int32_t ids[LCM_CLIP_TOKENS];
    make_word(i, word);
    lcm_tokenizer_encode(golden, word, ids);
    if (memcmp(ids, job->expected + (size_t)i * LCM_CLIP_TOKENS, sizeof ids) != 0)
      job->all_equal = FALSE;
  }
  return NULL;
}

/* The word cache overflows and is shared by threads without changing results. */
static void test_cache_under_threads(void) {
  LcmTokenizer *tokenizer = golden_tokenizer();
  int32_t *expected = g_new(int32_t, (size_t)CACHE_WORDS *LCM_CLIP_TOKENS);
  for (int i = 0; i < CACHE_WORDS; i++) {
    char word[16];
    make_word(i, word);
    g_assert_cmpint(lcm_tokenizer_encode(tokenizer, word, expected + (size_t)i * LCM_CLIP_TOKENS),
                    >=, 1);
  }
  EncodeJob jobs[THREADS];
  GThread *threads[THREADS];
  for (int t = 0; t < THREADS; t++) {
    jobs[t] = (EncodeJob){.expected = expected, .first = t * 1000};
    threads[t] = g_thread_new("encode", encode_words, &jobs[t]);
  }
  for (int t = 0; t < THREADS; t++) {
    g_thread_join(threads[t]);
    g_assert_true(jobs[t].all_equal);
  }
  g_free(expected);
}

static void write_file(const char *dir, const char *name, const char *contents) {
  g_autofree char *path = g_build_filename(dir, name, NULL);
  g_autoptr(GError) error = NULL;
  g_assert_true(g_file_set_contents(path, contents, -1, &error));
}

static void remove_files(const char *dir) {
  const char *names[] = {"vocab.json", "merges.txt", NULL};
  for (int i = 0; names[i]; i++) {
    g_autofree char *path = g_build_filename(dir, names[i], NULL);
    g_remove(path);
  }
  g_rmdir(dir);
}

/* A tiny vocabulary whose ids are not CLIP's, found through GIMP_LCM_DATADIR. */
static void test_custom_vocabulary_and_datadir_override(void) {
  g_autoptr(GError) error = NULL;
  g_autofree char *root = g_dir_make_tmp("lcm-tokenizer-XXXXXX", &error);
  g_assert_no_error(error);
  g_autofree char *dir = g_build_filename(root, "clip-tokenizer", NULL);
  g_assert_cmpint(g_mkdir(dir, 0700), ==, 0);
  write_file(dir, "vocab.json",
             "{\"<|startoftext|>\": 5, \"<|endoftext|>\": 6, \"a\": 1, \"b</w>\": 2,"
             " \"ab</w>\": 3}");
  write_file(dir, "merges.txt", "#version: 0.2\na b</w>\n");
  g_autofree char *saved = g_strdup(g_getenv("GIMP_LCM_DATADIR"));
  g_setenv("GIMP_LCM_DATADIR", root, TRUE);
  LcmTokenizer *tokenizer = lcm_tokenizer_new_default(&error);
  if (saved)
    g_setenv("GIMP_LCM_DATADIR", saved, TRUE);
  else
    g_unsetenv("GIMP_LCM_DATADIR");
  g_assert_no_error(error);

  int32_t ids[LCM_CLIP_TOKENS];
  g_assert_cmpint(lcm_tokenizer_encode(tokenizer, "AB", ids), ==, 1);
  g_assert_cmpint(ids[0], ==, 5);
  g_assert_cmpint(ids[1], ==, 3);
  g_assert_cmpint(ids[2], ==, 6);
  /* symbols missing from the vocabulary encode as <|endoftext|> */
  g_assert_cmpint(lcm_tokenizer_encode(tokenizer, "ba", ids), ==, 2);
  for (int i = 1; i < LCM_CLIP_TOKENS; i++) g_assert_cmpint(ids[i], ==, 6);
  lcm_tokenizer_free(tokenizer);
  remove_files(dir);
  g_rmdir(root);
}

static void test_bundled_vocabulary(void) {
  g_autoptr(GError) error = NULL;
  LcmTokenizer *bundled = lcm_tokenizer_new_default(&error);
  g_assert_no_error(error);
  const char *prompt = "a photo of an astronaut riding a horse on mars";
  int32_t ids_bundled[LCM_CLIP_TOKENS], ids_golden[LCM_CLIP_TOKENS];
  g_assert_cmpint(lcm_tokenizer_encode(bundled, prompt, ids_bundled), ==, 10);
  lcm_tokenizer_encode(golden_tokenizer(), prompt, ids_golden);
  g_assert_cmpmem(ids_bundled, sizeof ids_bundled, ids_golden, sizeof ids_golden);
  lcm_tokenizer_free(bundled);
}

static void assert_load_fails(const char *vocab, const char *merges, int code,
                              const char *message_part) {
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = g_dir_make_tmp("lcm-tokenizer-XXXXXX", &error);
  g_assert_no_error(error);
  if (vocab) write_file(dir, "vocab.json", vocab);
  write_file(dir, "merges.txt", merges);
  g_autofree char *vocab_path = g_build_filename(dir, "vocab.json", NULL);
  g_autofree char *merges_path = g_build_filename(dir, "merges.txt", NULL);
  LcmTokenizer *tokenizer = lcm_tokenizer_new(vocab_path, merges_path, &error);
  g_assert_null(tokenizer);
  g_assert_error(error, LCM_ERROR, code);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, message_part));
  remove_files(dir);
}

static void test_load_errors(void) {
  const char *specials = "{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1}";
  assert_load_fails(NULL, "#version\n", LCM_ERROR_IO, "vocab.json");
  assert_load_fails("{\"a\": 1,", "#version\n", LCM_ERROR_FORMAT, "vocab.json");
  assert_load_fails("[1, 2]", "#version\n", LCM_ERROR_FORMAT, "vocab.json");
  assert_load_fails("{\"a\": \"x\"}", "#version\n", LCM_ERROR_FORMAT, "'a'");
  assert_load_fails("{\"a\": 1}", "#version\n", LCM_ERROR_FORMAT, "<|endoftext|>");
  assert_load_fails(specials, "#version\na b\nc d e\n", LCM_ERROR_FORMAT, "line 3");

  g_autoptr(GError) error = NULL;
  g_assert_null(lcm_tokenizer_new("/nonexistent/vocab.json", "/nonexistent/merges.txt", &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_IO);
  g_assert_nonnull(strstr(error->message, "/nonexistent/vocab.json"));
  g_clear_error(&error);
  g_assert_null(lcm_tokenizer_new(NULL, "/nonexistent/merges.txt", &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/tokenizer/golden-prompts", test_golden_prompts);
  g_test_add_func("/tokenizer/text-cleanup", test_text_cleanup);
  g_test_add_func("/tokenizer/truncation-and-padding", test_truncation_and_padding);
  /* before any thread exists: it sets an environment variable */
  g_test_add_func("/tokenizer/custom-vocabulary-and-datadir-override",
                  test_custom_vocabulary_and_datadir_override);
  g_test_add_func("/tokenizer/cache-under-threads", test_cache_under_threads);
  g_test_add_func("/tokenizer/bundled-vocabulary", test_bundled_vocabulary);
  g_test_add_func("/tokenizer/load-errors", test_load_errors);
  int status = g_test_run();
  lcm_tokenizer_free(golden);
  return status;
}
