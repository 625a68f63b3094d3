/* The golden runner: runs every case of a cases.json (the schema of the
 * reference data in tests/data/golden) and compares with its tolerance. */
#pragma once

#include "lcm.h"

typedef struct {
  const char *cases_json;
  const char *only_case; /* NULL = all */
  const char *out_dir;   /* NULL = do not write outputs */
  LcmPrecision precision;
  int attention_chunk; /* 0 = built-in */
} GoldenOptions;

/* Prints a line per case and a summary. Returns the process exit status:
 * 0 when no case failed, 1 when one did, 2 on a usage or file error, 3 when
 * the one case asked for is not implemented. */
int golden_run(const GoldenOptions *options);
