/* CLIP byte-level BPE tokenizer.
 *
 * Reproduces transformers' slow CLIPTokenizer with ftfy installed, as
 * diffusers calls it (tests/data/golden/README.md, "Tokenizer"):
 *   1. split the raw text around the special tokens <|startoftext|> and
 *      <|endoftext|> (HF's added-token trie), then for every other piece:
 *   2. ftfy.fix_text,
 *   3. collapse whitespace runs to one space, strip, Python's str.lower(),
 *   4. CLIP's pre-tokenizer regex,
 *   5. byte-level BPE of every word, with "</w>" on its last symbol.
 * The ids are [BOS] + the first 75 tokens + [EOS], padded with the pad token
 * (EOS unless the tokenizer folder names another: SDXL's tokenizer_2 pads
 * with "!", id 0). A pad token other than EOS is an added special token in
 * HF: the text is split at each occurrence before step 2, like BOS and EOS.
 *
 * Symbols (vocabulary entries and BPE intermediates) are interned as ints, so
 * a BPE step looks merges up by a pair of ints, not by strings. */
#include "lcm.h"

#include <json-glib/json-glib.h>
#include <stdlib.h>
#include <string.h>

#define CONTENT_TOKENS (LCM_CLIP_TOKENS - 2)
/* CLIPTokenizer reads only this many merges: 49408 entries = 2 x 256 byte
 * symbols + merges + 2 special tokens. */
#define CLIP_MAX_MERGES (49152 - 256 - 2)
/* HF caches every word for the process lifetime; a plug-in session may see
 * endless prompts, so the cache is emptied when it reaches this size. */
#define BPE_CACHE_MAX_WORDS 8192
/* Vocabulary ids must leave room for the internal ids above them. */
#define MAX_VOCAB_ID (1 << 30)

static const char START_TOKEN[] = "<|startoftext|>";
static const char END_TOKEN[] = "<|endoftext|>";
static const char END_OF_WORD[] = "</w>";

typedef struct {
  int left, right; /* symbol ids of the pair */
  int merged;      /* symbol id of left+right */
  int rank;        /* line in merges.txt: lower ranks merge first */
  gint64 key;      /* pair_key(left, right) */
} Merge;

struct LcmTokenizer {
  /* symbol string -> id. Vocabulary entries have their vocab.json id; other
   * symbols (merge parts missing from the vocabulary) get ids from
   * first_internal_id on and encode as the unknown token, as in HF. */
  GHashTable *symbols;
  int first_internal_id, next_internal_id;
  Merge *merges;
  GHashTable *merge_by_pair;  /* gint64 pair key -> Merge* */
  int byte_symbol[256];       /* symbol of a byte inside a word */
  int final_byte_symbol[256]; /* symbol of a byte ending a word ("x</w>") */
  int32_t bos, eos;           /* eos is also CLIP's unknown token */
  int32_t pad;
  /* the pad token's text when it is not EOS (then split out of the text as
   * a special token), else NULL */
  char *pad_text;
  /* word bytes -> GArray of int32 ids. Encoding is logically const, so the
   * cache and its lock are reached through pointers. */
  GMutex *cache_lock;
  GHashTable *cache;
};

/* ---- Loading ------------------------------------------------------------ */

static gint64 pair_key(int left, int right) {
  return ((gint64)left << 32) | (guint32)right;
}

static gboolean lookup_symbol(const LcmTokenizer *tokenizer, const char *symbol, int *id) {
  gpointer value;
  if (!g_hash_table_lookup_extended(tokenizer->symbols, symbol, NULL, &value)) return FALSE;
  *id = GPOINTER_TO_INT(value);
  return TRUE;
}

static int intern_symbol(LcmTokenizer *tokenizer, const char *symbol) {
  int id;
  if (lookup_symbol(tokenizer, symbol, &id)) return id;
  id = tokenizer->next_internal_id++;
  g_hash_table_insert(tokenizer->symbols, g_strdup(symbol), GINT_TO_POINTER(id));
  return id;
}

static gboolean read_file(const char *path, const char *what, char **contents, gsize *length,
                          GError **error) {
  GError *local = NULL;
  if (g_file_get_contents(path, contents, length, &local)) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "Cannot read the tokenizer %s: %s", what,
              local->message);
  g_error_free(local);
  return FALSE;
}

static gboolean load_vocab(LcmTokenizer *tokenizer, const char *path, GError **error) {
  char *contents;
  gsize length;
  if (!read_file(path, "vocabulary", &contents, &length, error)) return FALSE;
  JsonParser *parser = json_parser_new();
  GError *local = NULL;
  gboolean ok = json_parser_load_from_data(parser, contents, (gssize)length, &local);
  g_free(contents);
  JsonNode *root = ok ? json_parser_get_root(parser) : NULL;
  if (!ok || !root || !JSON_NODE_HOLDS_OBJECT(root)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: expected a JSON object mapping tokens to ids%s%s", path, local ? ": " : "",
                local ? local->message : "");
    g_clear_error(&local);
    g_object_unref(parser);
    return FALSE;
  }
  JsonObjectIter iter;
  const char *token;
  JsonNode *node;
  int max_id = -1;
  json_object_iter_init(&iter, json_node_get_object(root));
  while (json_object_iter_next(&iter, &token, &node)) {
    gint64 id = -1;
    if (JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_INT64)
      id = json_node_get_int(node);
    if (id < 0 || id >= MAX_VOCAB_ID) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                  "%s: token '%s' has no valid id (expected an integer in [0, %d))", path, token,
                  MAX_VOCAB_ID);
      g_object_unref(parser);
      return FALSE;
    }
    g_hash_table_insert(tokenizer->symbols, g_strdup(token), GINT_TO_POINTER((int)id));
    max_id = MAX(max_id, (int)id);
  }
  g_object_unref(parser);
  tokenizer->first_internal_id = tokenizer->next_internal_id = max_id + 1;
  int bos, eos;
  if (!lookup_symbol(tokenizer, START_TOKEN, &bos) || !lookup_symbol(tokenizer, END_TOKEN, &eos)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: the CLIP special tokens '%s' and '%s' are missing; is this a CLIP "
                "tokenizer's vocab.json?",
                path, START_TOKEN, END_TOKEN);
    return FALSE;
  }
  tokenizer->bos = bos;
  tokenizer->eos = tokenizer->pad = eos;
  return TRUE;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
 * others map in order to U+0100 onwards, so every byte is a visible symbol. */
static void intern_byte_symbols(LcmTokenizer *tokenizer) {
  gunichar next_unprintable = 256;
  for (int byte = 0; byte < 256; byte++) {
    gboolean printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                         (byte >= 0xAE && byte <= 0xFF);
    char symbol[16];
    int n = g_unichar_to_utf8(printable ? (gunichar)byte : next_unprintable++, symbol);
    symbol[n] = '\0';
    tokenizer->byte_symbol[byte] = intern_symbol(tokenizer, symbol);
    strcpy(symbol + n, END_OF_WORD);
    tokenizer->final_byte_symbol[byte] = intern_symbol(tokenizer, symbol);
  }
}

/* The next line of a text split in place at '\n', or NULL past the end. (No
 * g_strsplit: its repeated strstr is quadratic under AddressSanitizer.) */
static char *next_line(char **rest) {
  char *line = *rest;
  if (!line) return NULL;
  char *newline = strchr(line, '\n');
  if (newline) *newline = '\0';
  *rest = newline ? newline + 1 : NULL;
  return line;
}

static gboolean load_merges(LcmTokenizer *tokenizer, const char *path, GError **error) {
  char *contents;
  if (!read_file(path, "merges", &contents, NULL, error)) return FALSE;
  /* As CLIPTokenizer: strip the file and skip its first ("#version") line. */
  char *rest = g_strstrip(contents);
  next_line(&rest);
  guint count = 0;
  for (const char *line = rest; line && count < CLIP_MAX_MERGES; count++) {
    line = strchr(line, '\n');
    if (line) line++;
  }
  tokenizer->merges = g_new0(Merge, MAX(count, 1));
  for (guint i = 0; i < count; i++) {
    const char *separators = " \t\r\v\f";
    char *save = NULL;
    const char *left = strtok_r(next_line(&rest), separators, &save);
    const char *right = left ? strtok_r(NULL, separators, &save) : NULL;
    if (!right || strtok_r(NULL, separators, &save)) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                  "%s: line %u is not a merge (two symbols separated by a space)", path, i + 2);
      g_free(contents);
      return FALSE;
    }
    Merge *merge = &tokenizer->merges[i];
    char *merged = g_strconcat(left, right, NULL);
    merge->left = intern_symbol(tokenizer, left);
    merge->right = intern_symbol(tokenizer, right);
    merge->merged = intern_symbol(tokenizer, merged);
    merge->rank = (int)i;
    merge->key = pair_key(merge->left, merge->right);
    g_free(merged);
    /* A repeated pair keeps its last rank, like Python's dict(zip(...)). */
    g_hash_table_insert(tokenizer->merge_by_pair, &merge->key, merge);
  }
  g_free(contents);
  return TRUE;
}

LcmTokenizer *lcm_tokenizer_new(const char *vocab_json_path, const char *merges_txt_path,
                                GError **error) {
  if (!vocab_json_path || !merges_txt_path) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                "A tokenizer needs both a vocab.json and a merges.txt path");
    return NULL;
  }
  LcmTokenizer *tokenizer = g_new0(LcmTokenizer, 1);
  tokenizer->symbols = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  tokenizer->merge_by_pair = g_hash_table_new(g_int64_hash, g_int64_equal);
  tokenizer->cache_lock = g_new(GMutex, 1);
  g_mutex_init(tokenizer->cache_lock);
  tokenizer->cache =
      g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_array_unref);
  if (!load_vocab(tokenizer, vocab_json_path, error)) goto fail;
  intern_byte_symbols(tokenizer);
  if (!load_merges(tokenizer, merges_txt_path, error)) goto fail;
  return tokenizer;
fail:
  lcm_tokenizer_free(tokenizer);
  return NULL;
}

/* The pad token a tokenizer folder names: special_tokens_map.json's
 * "pad_token", else tokenizer_config.json's, either a string or an
 * AddedToken object with "content". NULL when neither names one (then CLIP
 * pads with EOS); FALSE on an unreadable file. */
static gboolean read_pad_token(const char *dir, char **pad_text, GError **error) {
  static const char *const files[] = {"special_tokens_map.json", "tokenizer_config.json"};
  *pad_text = NULL;
  for (size_t i = 0; i < G_N_ELEMENTS(files) && !*pad_text; i++) {
    char *path = g_build_filename(dir, files[i], NULL);
    if (!g_file_test(path, G_FILE_TEST_IS_REGULAR)) {
      g_free(path);
      continue;
    }
    JsonParser *parser = json_parser_new();
    GError *local = NULL;
    gboolean ok = json_parser_load_from_file(parser, path, &local);
    JsonNode *root = ok ? json_parser_get_root(parser) : NULL;
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: expected a JSON object%s%s", path,
                  local ? ": " : "", local ? local->message : "");
      g_clear_error(&local);
      g_object_unref(parser);
      g_free(path);
      return FALSE;
    }
    JsonNode *pad = json_object_get_member(json_node_get_object(root), "pad_token");
    if (pad && JSON_NODE_HOLDS_OBJECT(pad))
      pad = json_object_get_member(json_node_get_object(pad), "content");
    if (pad && JSON_NODE_HOLDS_VALUE(pad) && json_node_get_value_type(pad) == G_TYPE_STRING &&
        *json_node_get_string(pad))
      *pad_text = g_strdup(json_node_get_string(pad));
    g_object_unref(parser);
    g_free(path);
  }
  return TRUE;
}

gboolean lcm_tokenizer_set_pad_token(LcmTokenizer *tokenizer, const char *pad_text,
                                     GError **error) {
  int id;
  if (!pad_text || !lookup_symbol(tokenizer, pad_text, &id) || id >= tokenizer->first_internal_id) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "the pad token '%s' is not in the tokenizer's vocabulary",
                pad_text ? pad_text : "(none)");
    return FALSE;
  }
  tokenizer->pad = id;
  g_clear_pointer(&tokenizer->pad_text, g_free);
  if (id != tokenizer->eos && id != tokenizer->bos) tokenizer->pad_text = g_strdup(pad_text);
  return TRUE;
}

LcmTokenizer *lcm_tokenizer_new_from_folder(const char *dir, GError **error) {
  char *pad_text = NULL;
  if (!dir || !read_pad_token(dir, &pad_text, error)) {
    if (!dir) lcm_error_invalid(error, "no tokenizer folder given");
    return NULL;
  }
  char *vocab = g_build_filename(dir, "vocab.json", NULL);
  char *merges = g_build_filename(dir, "merges.txt", NULL);
  LcmTokenizer *tokenizer = lcm_tokenizer_new(vocab, merges, error);
  g_free(merges);
  g_free(vocab);
  if (tokenizer && pad_text && !lcm_tokenizer_set_pad_token(tokenizer, pad_text, error)) {
    g_prefix_error(error, "%s: ", dir);
    g_clear_pointer(&tokenizer, lcm_tokenizer_free);
  }
  g_free(pad_text);
  return tokenizer;
}

LcmTokenizer *lcm_tokenizer_new_default(GError **error) {
  char *dir = lcm_find_data_file("clip-tokenizer");
  if (!dir) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                "The bundled CLIP vocabulary (clip-tokenizer/) is in none of $GIMP_LCM_DATADIR, "
                "%s and %s; reinstall gimp-lcm or point GIMP_LCM_DATADIR at its data folder",
                LCM_DATADIR, LCM_SOURCE_DATADIR);
    return NULL;
  }
  LcmTokenizer *tokenizer = lcm_tokenizer_new_from_folder(dir, error);
  g_free(dir);
  return tokenizer;
}

void lcm_tokenizer_free(LcmTokenizer *tokenizer) {
  if (!tokenizer) return;
  g_hash_table_unref(tokenizer->cache);
  g_mutex_clear(tokenizer->cache_lock);
  g_free(tokenizer->cache_lock);
  g_hash_table_unref(tokenizer->merge_by_pair);
  g_free(tokenizer->merges);
  g_free(tokenizer->pad_text);
  g_hash_table_unref(tokenizer->symbols);
  g_free(tokenizer);
}

/* ---- ftfy.fix_text -------------------------------------------------------
 * ftfy 6 with its default configuration: the fixers below are ftfy's, run in
 * ftfy's order until the text stops changing. Left out: fix_encoding
 * (mojibake repair, which leaves text that does not look like mojibake
 * alone), fix_line_breaks (it only turns line breaks into "\n", and the
 * whitespace clean-up after ftfy erases them all) and fix_surrogates (UTF-8
 * holds no surrogates). */

/* Windows-1252 for bytes 0x80..0x9F; its five holes keep the Latin-1 C1 code,
 * as in ftfy's sloppy-windows-1252 and Python's html.unescape. */
static const gunichar CP1252_HIGH[32] = {
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
};

typedef struct {
  const char *name;
  gunichar codepoint;
} HtmlEntity;

/* HTML 4's named entities plus &apos;, sorted by strcmp. ftfy knows all of
 * HTML5's; these are the ones prompts realistically contain. */
static const HtmlEntity HTML_ENTITIES[] = {
    {"AElig", 0x00C6},   {"Aacute", 0x00C1},  {"Acirc", 0x00C2},    {"Agrave", 0x00C0},
    {"Alpha", 0x0391},   {"Aring", 0x00C5},   {"Atilde", 0x00C3},   {"Auml", 0x00C4},
    {"Beta", 0x0392},    {"Ccedil", 0x00C7},  {"Chi", 0x03A7},      {"Dagger", 0x2021},
    {"Delta", 0x0394},   {"ETH", 0x00D0},     {"Eacute", 0x00C9},   {"Ecirc", 0x00CA},
    {"Egrave", 0x00C8},  {"Epsilon", 0x0395}, {"Eta", 0x0397},      {"Euml", 0x00CB},
    {"Gamma", 0x0393},   {"Iacute", 0x00CD},  {"Icirc", 0x00CE},    {"Igrave", 0x00CC},
    {"Iota", 0x0399},    {"Iuml", 0x00CF},    {"Kappa", 0x039A},    {"Lambda", 0x039B},
    {"Mu", 0x039C},      {"Ntilde", 0x00D1},  {"Nu", 0x039D},       {"OElig", 0x0152},
    {"Oacute", 0x00D3},  {"Ocirc", 0x00D4},   {"Ograve", 0x00D2},   {"Omega", 0x03A9},
    {"Omicron", 0x039F}, {"Oslash", 0x00D8},  {"Otilde", 0x00D5},   {"Ouml", 0x00D6},
    {"Phi", 0x03A6},     {"Pi", 0x03A0},      {"Prime", 0x2033},    {"Psi", 0x03A8},
    {"Rho", 0x03A1},     {"Scaron", 0x0160},  {"Sigma", 0x03A3},    {"THORN", 0x00DE},
    {"Tau", 0x03A4},     {"Theta", 0x0398},   {"Uacute", 0x00DA},   {"Ucirc", 0x00DB},
    {"Ugrave", 0x00D9},  {"Upsilon", 0x03A5}, {"Uuml", 0x00DC},     {"Xi", 0x039E},
    {"Yacute", 0x00DD},  {"Yuml", 0x0178},    {"Zeta", 0x0396},     {"aacute", 0x00E1},
    {"acirc", 0x00E2},   {"acute", 0x00B4},   {"aelig", 0x00E6},    {"agrave", 0x00E0},
    {"alefsym", 0x2135}, {"alpha", 0x03B1},   {"amp", 0x0026},      {"and", 0x2227},
    {"ang", 0x2220},     {"apos", 0x0027},    {"aring", 0x00E5},    {"asymp", 0x2248},
    {"atilde", 0x00E3},  {"auml", 0x00E4},    {"bdquo", 0x201E},    {"beta", 0x03B2},
    {"brvbar", 0x00A6},  {"bull", 0x2022},    {"cap", 0x2229},      {"ccedil", 0x00E7},
    {"cedil", 0x00B8},   {"cent", 0x00A2},    {"chi", 0x03C7},      {"circ", 0x02C6},
    {"clubs", 0x2663},   {"cong", 0x2245},    {"copy", 0x00A9},     {"crarr", 0x21B5},
    {"cup", 0x222A},     {"curren", 0x00A4},  {"dArr", 0x21D3},     {"dagger", 0x2020},
    {"darr", 0x2193},    {"deg", 0x00B0},     {"delta", 0x03B4},    {"diams", 0x2666},
    {"divide", 0x00F7},  {"eacute", 0x00E9},  {"ecirc", 0x00EA},    {"egrave", 0x00E8},
    {"empty", 0x2205},   {"emsp", 0x2003},    {"ensp", 0x2002},     {"epsilon", 0x03B5},
    {"equiv", 0x2261},   {"eta", 0x03B7},     {"eth", 0x00F0},      {"euml", 0x00EB},
    {"euro", 0x20AC},    {"exist", 0x2203},   {"fnof", 0x0192},     {"forall", 0x2200},
    {"frac12", 0x00BD},  {"frac14", 0x00BC},  {"frac34", 0x00BE},   {"frasl", 0x2044},
    {"gamma", 0x03B3},   {"ge", 0x2265},      {"gt", 0x003E},       {"hArr", 0x21D4},
    {"harr", 0x2194},    {"hearts", 0x2665},  {"hellip", 0x2026},   {"iacute", 0x00ED},
    {"icirc", 0x00EE},   {"iexcl", 0x00A1},   {"igrave", 0x00EC},   {"image", 0x2111},
    {"infin", 0x221E},   {"int", 0x222B},     {"iota", 0x03B9},     {"iquest", 0x00BF},
    {"isin", 0x2208},    {"iuml", 0x00EF},    {"kappa", 0x03BA},    {"lArr", 0x21D0},
    {"lambda", 0x03BB},  {"lang", 0x2329},    {"laquo", 0x00AB},    {"larr", 0x2190},
    {"lceil", 0x2308},   {"ldquo", 0x201C},   {"le", 0x2264},       {"lfloor", 0x230A},
    {"lowast", 0x2217},  {"loz", 0x25CA},     {"lrm", 0x200E},      {"lsaquo", 0x2039},
    {"lsquo", 0x2018},   {"lt", 0x003C},      {"macr", 0x00AF},     {"mdash", 0x2014},
    {"micro", 0x00B5},   {"middot", 0x00B7},  {"minus", 0x2212},    {"mu", 0x03BC},
    {"nabla", 0x2207},   {"nbsp", 0x00A0},    {"ndash", 0x2013},    {"ne", 0x2260},
    {"ni", 0x220B},      {"not", 0x00AC},     {"notin", 0x2209},    {"nsub", 0x2284},
    {"ntilde", 0x00F1},  {"nu", 0x03BD},      {"oacute", 0x00F3},   {"ocirc", 0x00F4},
    {"oelig", 0x0153},   {"ograve", 0x00F2},  {"oline", 0x203E},    {"omega", 0x03C9},
    {"omicron", 0x03BF}, {"oplus", 0x2295},   {"or", 0x2228},       {"ordf", 0x00AA},
    {"ordm", 0x00BA},    {"oslash", 0x00F8},  {"otilde", 0x00F5},   {"otimes", 0x2297},
    {"ouml", 0x00F6},    {"para", 0x00B6},    {"part", 0x2202},     {"permil", 0x2030},
    {"perp", 0x22A5},    {"phi", 0x03C6},     {"pi", 0x03C0},       {"piv", 0x03D6},
    {"plusmn", 0x00B1},  {"pound", 0x00A3},   {"prime", 0x2032},    {"prod", 0x220F},
    {"prop", 0x221D},    {"psi", 0x03C8},     {"quot", 0x0022},     {"rArr", 0x21D2},
    {"radic", 0x221A},   {"rang", 0x232A},    {"raquo", 0x00BB},    {"rarr", 0x2192},
    {"rceil", 0x2309},   {"rdquo", 0x201D},   {"real", 0x211C},     {"reg", 0x00AE},
    {"rfloor", 0x230B},  {"rho", 0x03C1},     {"rlm", 0x200F},      {"rsaquo", 0x203A},
    {"rsquo", 0x2019},   {"sbquo", 0x201A},   {"scaron", 0x0161},   {"sdot", 0x22C5},
    {"sect", 0x00A7},    {"shy", 0x00AD},     {"sigma", 0x03C3},    {"sigmaf", 0x03C2},
    {"sim", 0x223C},     {"spades", 0x2660},  {"sub", 0x2282},      {"sube", 0x2286},
    {"sum", 0x2211},     {"sup", 0x2283},     {"sup1", 0x00B9},     {"sup2", 0x00B2},
    {"sup3", 0x00B3},    {"supe", 0x2287},    {"szlig", 0x00DF},    {"tau", 0x03C4},
    {"there4", 0x2234},  {"theta", 0x03B8},   {"thetasym", 0x03D1}, {"thinsp", 0x2009},
    {"thorn", 0x00FE},   {"tilde", 0x02DC},   {"times", 0x00D7},    {"trade", 0x2122},
    {"uArr", 0x21D1},    {"uacute", 0x00FA},  {"uarr", 0x2191},     {"ucirc", 0x00FB},
    {"ugrave", 0x00F9},  {"uml", 0x00A8},     {"upsih", 0x03D2},    {"upsilon", 0x03C5},
    {"uuml", 0x00FC},    {"weierp", 0x2118},  {"xi", 0x03BE},       {"yacute", 0x00FD},
    {"yen", 0x00A5},     {"yuml", 0x00FF},    {"zeta", 0x03B6},     {"zwj", 0x200D},
    {"zwnj", 0x200C},
};

static int compare_entity_name(const void *name, const void *entity) {
  return strcmp(name, ((const HtmlEntity *)entity)->name);
}

static gboolean lookup_html_entity(const char *name, gunichar *codepoint) {
  const HtmlEntity *found = bsearch(name, HTML_ENTITIES, G_N_ELEMENTS(HTML_ENTITIES),
                                    sizeof HTML_ENTITIES[0], compare_entity_name);
  if (found) *codepoint = found->codepoint;
  return found != NULL;
}

/* Appends ftfy's decoding of the named entity "&name;" and returns TRUE, or
 * returns FALSE for an unknown name. */
static gboolean decode_named_entity(const char *name, GString *out) {
  gunichar codepoint;
  if (lookup_html_entity(name, &codepoint)) {
    g_string_append_unichar(out, codepoint);
    return TRUE;
  }
  /* ftfy also reads a lowercase-named entity spelled in capitals, as the
   * capital character: "&EACUTE;" is "É". */
  char *lower = g_ascii_strdown(name, -1);
  gboolean found = !strpbrk(name, "abcdefghijklmnopqrstuvwxyz") && strcmp(lower, name) != 0 &&
                   lookup_html_entity(lower, &codepoint);
  if (found) {
    char utf8[8];
    utf8[g_unichar_to_utf8(codepoint, utf8)] = '\0';
    char *upper = g_utf8_strup(utf8, -1);
    g_string_append(out, upper);
    g_free(upper);
  }
  g_free(lower);
  return found;
}

/* Code points Python's html.unescape decodes to nothing. */
static gboolean is_dropped_character_reference(gunichar value) {
  return (value >= 0x01 && value <= 0x08) || value == 0x0B || (value >= 0x0E && value <= 0x1F) ||
         (value >= 0x7F && value <= 0x9F) || (value >= 0xFDD0 && value <= 0xFDEF) ||
         (value & 0xFFFE) == 0xFFFE;
}

/* Appends Python's html.unescape of "&#digits;" ("&#xhex;" when digits starts
 * with x) and returns TRUE, or returns FALSE when the digits are not a
 * number, which ftfy leaves alone. */
static gboolean decode_character_reference(const char *digits, GString *out) {
  gboolean hex = digits[0] == 'x' || digits[0] == 'X';
  if (hex) digits++;
  if (!*digits) return FALSE;
  gunichar value = 0;
  for (const char *p = digits; *p; p++) {
    int digit = hex ? g_ascii_xdigit_value(*p) : g_ascii_digit_value(*p);
    if (digit < 0) return FALSE;
    value = MIN(value * (hex ? 16 : 10) + (gunichar)digit, 0x110000); /* saturate past Unicode */
  }
  if (value == 0 || (value >= 0xD800 && value <= 0xDFFF) || value > 0x10FFFF)
    value = 0xFFFD;
  else if (value >= 0x80 && value <= 0x9F)
    value = CP1252_HIGH[value - 0x80];
  else if (value != '\r' && is_dropped_character_reference(value))
    return TRUE;
  g_string_append_unichar(out, value);
  return TRUE;
}

/* ftfy's unescape_html: replaces entities matching `&#?[0-9A-Za-z]{1,24};`. */
static char *unescape_html(const char *text) {
  GString *out = g_string_sized_new(strlen(text));
  const char *p = text;
  while (*p) {
    if (*p == '&') {
      gboolean numeric = p[1] == '#';
      const char *name = p + 1 + numeric;
      size_t n = 0;
      while (n <= 24 && g_ascii_isalnum(name[n])) n++;
      if (n >= 1 && n <= 24 && name[n] == ';') {
        char *copy = g_strndup(name, n);
        gboolean decoded =
            numeric ? decode_character_reference(copy, out) : decode_named_entity(copy, out);
        g_free(copy);
        if (decoded) {
          p = name + n + 1;
          continue;
        }
      }
    }
    g_string_append_c(out, *p++);
  }
  return g_string_free(out, FALSE);
}

/* A per-character fixer: appends the replacement of c and returns TRUE, or
 * returns FALSE to keep c. */
typedef gboolean (*CharFixer)(gunichar c, GString *out);

static char *fix_each_char(const char *text, CharFixer fixer) {
  GString *out = g_string_sized_new(strlen(text));
  for (const char *p = text; *p; p = g_utf8_next_char(p)) {
    gunichar c = g_utf8_get_char(p);
    if (!fixer(c, out)) g_string_append_unichar(out, c);
  }
  return g_string_free(out, FALSE);
}

/* fix_c1_controls: C1 controls are Windows-1252 bytes decoded as Latin-1. */
static gboolean fix_c1_control(gunichar c, GString *out) {
  if (c < 0x80 || c > 0x9F) return FALSE;
  g_string_append_unichar(out, CP1252_HIGH[c - 0x80]);
  return TRUE;
}

/* fix_latin_ligatures */
static gboolean fix_latin_ligature(gunichar c, GString *out) {
  static const struct {
    gunichar ligature;
    const char *letters;
  } ligatures[] = {
      {0x0132, "IJ"},      {0x0133, "ij"},      {0x0149, "\u02BCn"}, {0x01C4, "D\u017D"},
      {0x01C5, "D\u017E"}, {0x01C6, "d\u017E"}, {0x01C7, "LJ"},      {0x01C8, "Lj"},
      {0x01C9, "lj"},      {0x01CA, "NJ"},      {0x01CB, "Nj"},      {0x01CC, "nj"},
      {0x01F1, "DZ"},      {0x01F2, "Dz"},      {0x01F3, "dz"},      {0xFB00, "ff"},
      {0xFB01, "fi"},      {0xFB02, "fl"},      {0xFB03, "ffi"},     {0xFB04, "ffl"},
      {0xFB05, "\u017Ft"}, {0xFB06, "st"},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(ligatures); i++) {
    if (ligatures[i].ligature == c) {
      g_string_append(out, ligatures[i].letters);
      return TRUE;
    }
  }
  return FALSE;
}

/* fix_character_width: halfwidth and fullwidth forms become their NFKC
 * equivalents, the ideographic space a space. */
static gboolean fix_character_width(gunichar c, GString *out) {
  if (c == 0x3000) {
    g_string_append_c(out, ' ');
    return TRUE;
  }
  if (c < 0xFF01 || c > 0xFFEF) return FALSE;
  char utf8[8];
  utf8[g_unichar_to_utf8(c, utf8)] = '\0';
  char *normal = g_utf8_normalize(utf8, -1, G_NORMALIZE_NFKC);
  g_string_append(out, normal ? normal : utf8);
  g_free(normal);
  return TRUE;
}

/* uncurl_quotes */
static gboolean uncurl_quote(gunichar c, GString *out) {
  if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B))
    g_string_append_c(out, '\'');
  else if (c >= 0x201C && c <= 0x201F)
    g_string_append_c(out, '"');
  else
    return FALSE;
  return TRUE;
}

/* remove_terminal_escapes: ANSI sequences `\x1b\[(\d|;)*[a-zA-Z]`. */
static char *remove_terminal_escapes(const char *text) {
  GString *out = g_string_sized_new(strlen(text));
  const char *p = text;
  while (*p) {
    if (p[0] == '\x1b' && p[1] == '[') {
      const char *end = p + 2;
      while (*end == ';' || g_unichar_isdigit(g_utf8_get_char(end))) end = g_utf8_next_char(end);
      if (g_ascii_isalpha(*end)) {
        p = end + 1;
        continue;
      }
    }
    g_string_append_c(out, *p++);
  }
  return g_string_free(out, FALSE);
}

/* remove_control_chars: C0 controls other than \t \n \f \r, DEL, deprecated
 * format characters, the byte-order mark and interlinear annotations. */
static gboolean remove_control_char(gunichar c, GString *out) {
  (void)out;
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
         (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

/* Replaces the string `text` by `step`, a new string usually computed from it. */
#define APPLY(text, step)                                                                          \
  do {                                                                                             \
    char *fixed_ = (step);                                                                         \
    g_free(text);                                                                                  \
    text = fixed_;                                                                                 \
  } while (0)

/* ftfy's fix_and_explain on one line; consumes `text`. */
static char *ftfy_fix_segment(char *text, gboolean unescape_entities) {
  for (;;) {
    char *fixed = unescape_entities ? unescape_html(text) : g_strdup(text);
    APPLY(fixed, fix_each_char(fixed, fix_c1_control));
    APPLY(fixed, fix_each_char(fixed, fix_latin_ligature));
    APPLY(fixed, fix_each_char(fixed, fix_character_width));
    APPLY(fixed, fix_each_char(fixed, uncurl_quote));
    APPLY(fixed, remove_terminal_escapes(fixed));
    APPLY(fixed, fix_each_char(fixed, remove_control_char));
    APPLY(fixed, g_utf8_normalize(fixed, -1, G_NORMALIZE_NFC));
    gboolean stable = strcmp(fixed, text) == 0;
    g_free(text);
    if (stable) return fixed;
    text = fixed;
  }
}

/* ftfy.fix_text: fixes the text line by line. HTML entities are decoded until
 * a line with '<' shows the text may be HTML; from then on they are kept. */
static char *ftfy_fix_text(const char *text) {
  GString *out = g_string_sized_new(strlen(text));
  gboolean unescape_entities = TRUE;
  while (*text) {
    const char *newline = strchr(text, '\n');
    size_t length = newline ? (size_t)(newline - text) + 1 : strlen(text);
    char *line = g_strndup(text, length);
    if (strchr(line, '<')) unescape_entities = FALSE;
    char *fixed = ftfy_fix_segment(line, unescape_entities);
    g_string_append(out, fixed);
    g_free(fixed);
    text += length;
  }
  return g_string_free(out, FALSE);
}

/* ---- Clean-up and pre-tokenization ---------------------------------------- */

/* Python's str.isspace(), which is what `\s` and strip() match. */
static gboolean is_python_space(gunichar c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

/* re.sub(r"\s+", " ", text).strip() */
static char *collapse_whitespace(const char *text) {
  GString *out = g_string_sized_new(strlen(text));
  gboolean pending_space = FALSE;
  for (const char *p = text; *p; p = g_utf8_next_char(p)) {
    gunichar c = g_utf8_get_char(p);
    if (is_python_space(c)) {
      pending_space = out->len > 0;
      continue;
    }
    if (pending_space) g_string_append_c(out, ' ');
    pending_space = FALSE;
    g_string_append_unichar(out, c);
  }
  return g_string_free(out, FALSE);
}

/* Unicode's Cased property, as far as GLib tells: cased letters. */
static gboolean is_cased(gunichar c) {
  GUnicodeType type = g_unichar_type(c);
  return type == G_UNICODE_UPPERCASE_LETTER || type == G_UNICODE_LOWERCASE_LETTER ||
         type == G_UNICODE_TITLECASE_LETTER;
}

/* Unicode's Case_Ignorable property. */
static gboolean is_case_ignorable(gunichar c) {
  switch (g_unichar_type(c)) {
  case G_UNICODE_NON_SPACING_MARK:
  case G_UNICODE_ENCLOSING_MARK:
  case G_UNICODE_FORMAT:
  case G_UNICODE_MODIFIER_LETTER:
  case G_UNICODE_MODIFIER_SYMBOL:
    return TRUE;
  default:
    break;
  }
  /* Word_Break MidLetter, MidNumLet and Single_Quote */
  static const gunichar word_inner[] = {0x0027, 0x002E, 0x003A, 0x00B7, 0x0387, 0x055F,
                                        0x05F4, 0x2018, 0x2019, 0x2024, 0x2027, 0xFE13,
                                        0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
  for (size_t i = 0; i < G_N_ELEMENTS(word_inner); i++)
    if (word_inner[i] == c) return TRUE;
  return FALSE;
}

/* Unicode's Final_Sigma condition for chars[at], as Python's str.lower()
 * checks it: a cased letter before, none after (skipping case-ignorables). */
static gboolean is_final_sigma(const gunichar *chars, glong n, glong at) {
  glong before = at - 1;
  while (before >= 0 && is_case_ignorable(chars[before])) before--;
  if (before < 0 || !is_cased(chars[before])) return FALSE;
  glong after = at + 1;
  while (after < n && is_case_ignorable(chars[after])) after++;
  return after == n || !is_cased(chars[after]);
}

/* Python's str.lower(): full lowercase mapping, independent of the locale
 * (g_utf8_strdown would turn I into a dotless i in a Turkish locale). */
static char *python_lower(const char *text) {
  glong n;
  gunichar *chars = g_utf8_to_ucs4_fast(text, -1, &n);
  GString *out = g_string_sized_new(strlen(text));
  for (glong i = 0; i < n; i++) {
    if (chars[i] == 0x0130) /* İ: its one unconditional multi-character lowercase */
      g_string_append(out, "i\u0307");
    else if (chars[i] == 0x03A3) /* Σ */
      g_string_append_unichar(out, is_final_sigma(chars, n, i) ? 0x03C2 : 0x03C3);
    else
      g_string_append_unichar(out, g_unichar_tolower(chars[i]));
  }
  g_free(chars);
  return g_string_free(out, FALSE);
}

static gboolean is_letter(gunichar c) {
  switch (g_unichar_type(c)) {
  case G_UNICODE_UPPERCASE_LETTER:
  case G_UNICODE_LOWERCASE_LETTER:
  case G_UNICODE_TITLECASE_LETTER:
  case G_UNICODE_MODIFIER_LETTER:
  case G_UNICODE_OTHER_LETTER:
    return TRUE;
  default:
    return FALSE;
  }
}

static gboolean is_number(gunichar c) {
  GUnicodeType type = g_unichar_type(c);
  return type == G_UNICODE_DECIMAL_NUMBER || type == G_UNICODE_LETTER_NUMBER ||
         type == G_UNICODE_OTHER_NUMBER;
}

/* The end of `literal` (ASCII) matched case-insensitively at p, or NULL. The
 * regex's simple case folding equates ſ (long s) with s; the text is already
 * lowercase, so that is the only other variant left. */
static const char *match_folded(const char *p, const char *literal) {
  for (; *literal; literal++) {
    if (*p == *literal)
      p++;
    else if (*literal == 's' && g_str_has_prefix(p, "\u017F"))
      p += strlen("\u017F");
    else
      return NULL;
  }
  return p;
}

/* The end of the pre-tokenizer match at p, CLIP's regex
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * (case-insensitive), or NULL when p is at whitespace. */
static const char *match_word(const char *p) {
  static const char *const literals[] = {START_TOKEN, END_TOKEN, "'s",  "'t", "'re",
                                         "'ve",       "'m",      "'ll", "'d"};
  for (size_t i = 0; i < G_N_ELEMENTS(literals); i++) {
    const char *end = match_folded(p, literals[i]);
    if (end) return end;
  }
  gunichar c = g_utf8_get_char(p);
  if (is_python_space(c)) return NULL;
  const char *end = g_utf8_next_char(p);
  if (is_number(c)) return end;
  gboolean letters = is_letter(c);
  for (; *end; end = g_utf8_next_char(end)) {
    gunichar next = g_utf8_get_char(end);
    gboolean same_class =
        letters ? is_letter(next) : !is_python_space(next) && !is_letter(next) && !is_number(next);
    if (!same_class) break;
  }
  return end;
}

/* ---- BPE ------------------------------------------------------------------ */

/* The ids of one word (its UTF-8 bytes) after byte-level BPE. */
static GArray *bpe_encode_word(const LcmTokenizer *tokenizer, const guchar *word, size_t length) {
  int *symbols = g_new(int, length);
  for (size_t i = 0; i < length; i++)
    symbols[i] =
        i + 1 < length ? tokenizer->byte_symbol[word[i]] : tokenizer->final_byte_symbol[word[i]];
  size_t count = length;
  while (count > 1) {
    const Merge *best = NULL;
    for (size_t i = 0; i + 1 < count; i++) {
      gint64 key = pair_key(symbols[i], symbols[i + 1]);
      const Merge *merge = g_hash_table_lookup(tokenizer->merge_by_pair, &key);
      if (merge && (!best || merge->rank < best->rank)) best = merge;
    }
    if (!best) break;
    size_t kept = 0;
    for (size_t i = 0; i < count; kept++) {
      if (i + 1 < count && symbols[i] == best->left && symbols[i + 1] == best->right) {
        symbols[kept] = best->merged;
        i += 2;
      } else {
        symbols[kept] = symbols[i++];
      }
    }
    count = kept;
  }
  GArray *ids = g_array_sized_new(FALSE, FALSE, sizeof(int32_t), (guint)count);
  for (size_t i = 0; i < count; i++) {
    int32_t id = symbols[i] < tokenizer->first_internal_id ? symbols[i] : tokenizer->eos;
    g_array_append_val(ids, id);
  }
  g_free(symbols);
  return ids;
}

static void append_word_ids(const LcmTokenizer *tokenizer, const char *word, size_t length,
                            GArray *ids) {
  /* HF's BPE cache starts out holding the special tokens as themselves. */
  if (length == strlen(START_TOKEN) && memcmp(word, START_TOKEN, length) == 0) {
    g_array_append_val(ids, tokenizer->bos);
    return;
  }
  if (length == strlen(END_TOKEN) && memcmp(word, END_TOKEN, length) == 0) {
    g_array_append_val(ids, tokenizer->eos);
    return;
  }
  char *key = g_strndup(word, length);
  g_mutex_lock(tokenizer->cache_lock);
  GArray *encoded = g_hash_table_lookup(tokenizer->cache, key);
  if (encoded) g_array_ref(encoded);
  g_mutex_unlock(tokenizer->cache_lock);
  if (encoded) {
    g_free(key);
  } else {
    encoded = bpe_encode_word(tokenizer, (const guchar *)word, length);
    g_mutex_lock(tokenizer->cache_lock);
    if (g_hash_table_size(tokenizer->cache) >= BPE_CACHE_MAX_WORDS)
      g_hash_table_remove_all(tokenizer->cache);
    g_hash_table_replace(tokenizer->cache, key, g_array_ref(encoded));
    g_mutex_unlock(tokenizer->cache_lock);
  }
  g_array_append_vals(ids, encoded->data, encoded->len);
  g_array_unref(encoded);
}

/* Tokenizes text that holds no special token. */
static void append_text_ids(const LcmTokenizer *tokenizer, const char *text, size_t length,
                            GArray *ids) {
  char *piece = g_strndup(text, length);
  APPLY(piece, ftfy_fix_text(piece));
  APPLY(piece, collapse_whitespace(piece));
  APPLY(piece, python_lower(piece));
  for (const char *p = piece; *p;) {
    const char *end = match_word(p);
    if (end)
      append_word_ids(tokenizer, p, (size_t)(end - p), ids);
    else
      end = g_utf8_next_char(p);
    p = end;
  }
  g_free(piece);
}

int lcm_tokenizer_encode(const LcmTokenizer *tokenizer, const char *text,
                         int32_t ids[LCM_CLIP_TOKENS]) {
  g_return_val_if_fail(tokenizer && ids, 0);
  char *valid = g_utf8_make_valid(text ? text : "", -1);
  GArray *tokens = g_array_new(FALSE, FALSE, sizeof(int32_t));
  /* Special tokens in the raw text become their ids (HF's added-token split). */
  const struct {
    const char *text;
    int32_t id;
  } specials[] = {{START_TOKEN, tokenizer->bos},
                  {END_TOKEN, tokenizer->eos},
                  {tokenizer->pad_text, tokenizer->pad}};
  const char *rest = valid;
  for (;;) {
    const char *special = NULL;
    size_t which = 0;
    for (size_t i = 0; i < G_N_ELEMENTS(specials); i++) {
      const char *found = specials[i].text ? strstr(rest, specials[i].text) : NULL;
      if (found && (!special || found < special)) special = found, which = i;
    }
    append_text_ids(tokenizer, rest, special ? (size_t)(special - rest) : strlen(rest), tokens);
    if (!special) break;
    g_array_append_val(tokens, specials[which].id);
    rest = special + strlen(specials[which].text);
  }
  int count = (int)tokens->len;
  int kept = MIN(count, CONTENT_TOKENS);
  ids[0] = tokenizer->bos;
  for (int i = 0; i < kept; i++) ids[1 + i] = g_array_index(tokens, int32_t, i);
  ids[kept + 1] = tokenizer->eos;
  for (int i = kept + 2; i < LCM_CLIP_TOKENS; i++) ids[i] = tokenizer->pad;
  g_array_unref(tokens);
  g_free(valid);
  return count;
}
