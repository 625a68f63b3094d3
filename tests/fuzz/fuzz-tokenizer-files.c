/* core/tokenizer.c: any tokenizer folder: vocab.json, merges.txt and, after
 * a second NUL byte, special_tokens_map.json (its pad_token, e.g. SDXL
 * tokenizer_2's "!"), then a few prompts through what loaded. */
#include "fuzz-common.h"

#include <glib/gstdio.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *split = memchr(data, '\0', size);
  size_t vocab_size = split ? (size_t)(split - data) : size;
  fuzz_write_file("vocab.json", data, vocab_size);
  const uint8_t *merges = split ? split + 1 : data + size;
  const uint8_t *special = memchr(merges, '\0', (size_t)(data + size - merges));
  size_t merges_size = (size_t)((special ? special : data + size) - merges);
  fuzz_write_file("merges.txt", merges, merges_size);
  if (special)
    fuzz_write_file("special_tokens_map.json", special + 1, (size_t)(data + size - special - 1));
  else
    g_remove(fuzz_write_file("special_tokens_map.json", NULL, 0));
  GError *error = NULL;
  LcmTokenizer *tokenizer = lcm_tokenizer_new_from_folder(fuzz_scratch_dir(), &error);
  if (!tokenizer) {
    fuzz_expect_lcm_error(error);
    return 0;
  }
  static const char *const prompts[] = {"a photo of a cat",
                                        "Ünïcödé &amp; <|endoftext|> ﬁne  ＦＵＬＬ", "",
                                        "aaaaaaaaaaaaaaaaaaaaaaaa"};
  for (size_t i = 0; i < G_N_ELEMENTS(prompts); i++) {
    int32_t ids[LCM_CLIP_TOKENS];
    fuzz_assert(lcm_tokenizer_encode(tokenizer, prompts[i], ids) >= 0, "a negative token count");
  }
  lcm_tokenizer_free(tokenizer);
  return 0;
}
