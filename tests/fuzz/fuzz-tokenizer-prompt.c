/* core/tokenizer.c: any text as a prompt, with the bundled CLIP vocabulary. */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static LcmTokenizer *tokenizer;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!tokenizer) {
    GError *error = NULL;
    tokenizer = lcm_tokenizer_new_default(&error);
    fuzz_assert(tokenizer != NULL, error ? error->message : "no bundled vocabulary");
  }
  char *prompt = fuzz_string(data, size);
  int32_t ids[LCM_CLIP_TOKENS];
  int count = lcm_tokenizer_encode(tokenizer, prompt, ids);
  fuzz_assert(count >= 0, "a negative token count");
  fuzz_assert(ids[0] == LCM_CLIP_BOS && ids[LCM_CLIP_TOKENS - 1] == LCM_CLIP_EOS,
              "ids do not start with BOS and end with EOS");
  for (int i = 0; i < LCM_CLIP_TOKENS; i++)
    fuzz_assert(ids[i] >= 0 && ids[i] <= LCM_CLIP_EOS, "an id outside the vocabulary");
  g_free(prompt);
  return 0;
}
