/* core/tokenizer.c: any vocab.json and merges.txt (the input is both, split
 * at its first NUL byte), then a few prompts through what loaded. */
#include "fuzz-common.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *split = memchr(data, '\0', size);
  size_t vocab_size = split ? (size_t)(split - data) : size;
  const char *vocab = fuzz_write_file("vocab.json", data, vocab_size);
  const char *merges = split ? fuzz_write_file("merges.txt", split + 1, size - vocab_size - 1)
                             : fuzz_write_file("merges.txt", NULL, 0);
  GError *error = NULL;
  LcmTokenizer *tokenizer = lcm_tokenizer_new(vocab, merges, &error);
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
