/* Shared by the libFuzzer targets (docs/fuzzing.md): inputs become files the
 * way strangers' files reach the parsers, and every failure must be a
 * GError of the LCM_ERROR domain, never a crash, a GLib critical or a
 * warning. */
#pragma once

#include "lcm.h"
#include "weights.h"

#include <stddef.h>
#include <stdint.h>

/* Writes `size` bytes into `name` inside this process's scratch folder and
 * returns the path (owned here, valid until the next call with that name). */
const char *fuzz_write_file(const char *name, const uint8_t *data, size_t size);
/* The scratch folder (created on first use, removed at exit). */
const char *fuzz_scratch_dir(void);
/* The input as a NUL-terminated string (g_free it). */
char *fuzz_string(const uint8_t *data, size_t size);
/* Aborts unless `error` is set, in the LCM_ERROR domain, with a message;
 * then frees it. Parsers report every failure that way. */
void fuzz_expect_lcm_error(GError *error);
/* Aborts with `what` when `condition` is false (libFuzzer records the input). */
void fuzz_assert(gboolean condition, const char *what);
/* Reads every tensor of `weights` by its shape, as a network loads them
 * (conversion and any queued LoRA merge); failures must be LCM_ERRORs. */
void fuzz_read_all_weights(const Weights *weights);
/* A file of the repository's tests/data folder (g_free it). */
char *fuzz_test_data(const char *relative);
