#!/bin/sh
# Runs gimp-lcm-bench on a tiny model (one fp32 size, no fresh processes) and
# checks that the report holds every stage with a FLOP count and finite
# output, the whole run, and the run against the compute floor.
# Usage: bench-smoke.sh BENCH MODEL SIZE
set -eu
bench=$1 model=$2 size=$3
report=$("$bench" run --model "$model" --sizes "$size" --precision fp32 --repeat 1 --no-fresh)
printf '%s\n' "$report"
fail() { echo "bench-smoke: $1" >&2; exit 1; }
side="${size}×${size}"
printf '%s\n' "$report" | grep -Eq "^\| Model \| SD(1\.5|XL) family; parameters: text encoder [0-9.]+ M, UNet " ||
  fail "no model row with parameter counts"
for stage in "UNet step" "VAE decode" "VAE encode"; do
  printf '%s\n' "$report" | grep -q "^| fp32 | $side | $stage | [0-9.e+]* | " ||
    fail "no '$stage' row with a FLOP count at $side"
done
printf '%s\n' "$report" | grep -q "^| fp32 | 77 tokens | text encode | [0-9.e+]* | " ||
  fail "no text-encode row with a FLOP count"
printf '%s\n' "$report" | grep -q "non-finite" && fail "a stage computed non-finite output"
printf '%s\n' "$report" | grep -Eq "^\| fp32 \| $side \| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9.]+× \|$" ||
  fail "no run-against-floor row at $side"
printf '%s\n' "$report" | grep -Eq "^\| fp32 \| $side \| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9]+ \|" ||
  fail "no whole-run row at $side"
echo "bench-smoke: report complete"
