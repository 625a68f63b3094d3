#!/bin/bash
# The plug-in in a real GIMP 3: runs one test of lcm-tests.scm in
# gimp-console (batch mode, Script-Fu) and compares the layers it exports
# with gimp-lcm-cli's pictures for the same arguments.
#
#   run-gimp-tests.sh TEST PLUGIN CLI OUT_DIR
#
# TEST: txt2img, clip-skip, img2img, inpaint, gray, errors or resident on the tiny SD1.5
# test model; sdxl-txt2img, sdxl-img2img or sdxl-inpaint on the tiny SDXL one
# (tests/data/golden-sdxl/tiny-sdxl-lcm), inpainting at twice the size as its
# native side is twice SD1.5's. PLUGIN: the built gimp-lcm binary, copied into
# a throw-away GIMP profile (GIMP3_DIRECTORY) under OUT_DIR/TEST. Both sides
# run the same model in fp32, so the pictures must match bit for bit (the
# grey test allows one level: GIMP turns the CLI's 8-bit RGB grey, the
# plug-in its unrounded RGB).
set -euo pipefail

if [ $# -ne 4 ]; then
  echo "usage: $0 TEST PLUGIN CLI OUT_DIR" >&2
  exit 2
fi
test_name=$1
plugin=$(realpath "$2")
cli_binary=$(realpath "$3")
here=$(cd "$(dirname "$0")" && pwd)
model=$(realpath "$here/../data/golden/tiny-lcm")
# The model's native side / 512: sizes of the inpainting test.
scale=1
case $test_name in
  sdxl-*)
    model=$(realpath "$here/../data/golden-sdxl/tiny-sdxl-lcm")
    scale=2
    ;;
esac
# The Script-Fu test of the same name, whatever the model.
case_name=${test_name#sdxl-}
work=$(realpath -m "$4/$test_name")
# Each GIMP call gets this long; a failed batch otherwise could hang.
GIMP_TIMEOUT=${GIMP_TIMEOUT:-120}
# gimp-console's status when a batch command fails (with --quit).
BATCH_FAILED=70

rm -rf "$work"
mkdir -p "$work/profile/plug-ins/gimp-lcm" "$work/models"
cp "$plugin" "$work/profile/plug-ins/gimp-lcm/gimp-lcm"
export GIMP3_DIRECTORY=$work/profile
export GIMP_LCM_PRECISION=fp32
export GIMP_LCM_MODELS=$work/models # an empty models folder: only named models run
# A weight cache of this test's own: the GIMP run writes it and the CLI run
# reads it, whatever other tests running at the same time leave in theirs.
export GIMP_LCM_WEIGHT_CACHE=$work/weight-cache
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

fail() {
  echo "FAIL ($test_name): $*" >&2
  exit 1
}

# Runs lcm-tests.scm, then EXPR, in gimp-console; returns GIMP's status.
gimp_batch() {
  local status=0
  timeout "$GIMP_TIMEOUT" gimp-console-3.0 -i --quit \
    --batch-interpreter=plug-in-script-fu-eval \
    -b "(begin (load \"$here/lcm-tests.scm\") $1)" >"$work/gimp.out" 2>"$work/gimp.err" ||
    status=$?
  echo "--- gimp-console status $status; stdout:"
  cat "$work/gimp.out"
  echo "--- stderr (GIMP's usual noise included):"
  cat "$work/gimp.err"
  return $status
}

# The same generation with the command-line client.
cli() {
  local command=$1
  shift
  timeout "$GIMP_TIMEOUT" "$cli_binary" "$command" --model "$model" --precision fp32 "$@" ||
    fail "gimp-lcm-cli $command failed"
}

# Largest difference between two pictures' 8-bit values (alpha included).
max_difference() {
  local report
  report=$(compare -metric PAE "$1" "$2" null: 2>&1 || true)
  case $report in
    *"("*")"*) ;;
    *) fail "cannot compare $1 and $2: $report" ;;
  esac
  local fraction=${report##*(}
  fraction=${fraction%%)*}
  awk -v f="$fraction" 'BEGIN { printf "%d\n", f * 255 + 0.5 }'
}

expect_same() { # A B [ALLOWED]
  local difference
  difference=$(max_difference "$1" "$2")
  echo "max difference $(basename "$1") vs $(basename "$2"): $difference"
  [ "$difference" -le "${3:-0}" ] || fail "$1 and $2 differ by up to $difference levels"
}

expect_passed() { # EXPR NAME
  gimp_batch "$1" || fail "the Script-Fu test failed (status $?; see above)"
  grep -q "LCM-TEST-PASSED $2" "$work/gimp.out" || fail "no PASSED line from Script-Fu"
}

# An 8-bit RGB test picture.
make_picture() { # WIDTH HEIGHT PATH
  convert -size "$1x$2" -seed 11 plasma:fractal -depth 8 -type TrueColor "PNG24:$3"
}

case $case_name in
  txt2img)
    expect_passed "(lcm-test-txt2img \"$model\" 0 \"$work\")" txt2img
    cli txt2img "a red fox in the snow" --seed 42 --width 64 --height 48 -o "$work/cli.png"
    expect_same "$work/gimp.png" "$work/cli.png"
    ;;
  clip-skip)
    expect_passed "(lcm-test-txt2img \"$model\" 1 \"$work\")" txt2img
    cli txt2img "a red fox in the snow" --seed 42 --width 64 --height 48 --clip-skip 1 \
      -o "$work/cli.png"
    expect_same "$work/gimp.png" "$work/cli.png"
    # And the skip did something: the picture without it differs.
    cli txt2img "a red fox in the snow" --seed 42 --width 64 --height 48 -o "$work/cli-no-skip.png"
    [ "$(max_difference "$work/gimp.png" "$work/cli-no-skip.png")" -gt 0 ] ||
      fail "clip-skip 1 made the same picture as no skip"
    ;;
  img2img)
    make_picture 64 48 "$work/source.png"
    expect_passed "(lcm-test-img2img \"$model\" \"$work/source.png\" \"$work\")" img2img
    cli img2img "an oil painting" -i "$work/source.png" --seed 7 --strength 0.6 -o "$work/cli.png"
    expect_same "$work/gimp-new-layer.png" "$work/cli.png"
    expect_same "$work/gimp-replaced.png" "$work/cli.png"
    ;;
  inpaint)
    s() { echo $(($1 * scale)); }
    make_picture "$(s 512)" "$(s 384)" "$work/source.png"
    # A feathered ellipse in image coordinates, and its part over the layer
    # (placed at 40,32 times scale) as the CLI's mask.
    convert -size "$(s 600)x$(s 440)" xc:black -fill white \
      -draw "ellipse $(s 290),$(s 230) $(s 190),$(s 150) 0,360" -blur "0x$(s 10)" \
      -depth 8 -type Grayscale "$work/selection.png"
    convert "$work/selection.png" -crop "$(s 512)x$(s 384)+$(s 40)+$(s 32)" +repage "$work/mask.png"
    expect_passed "(lcm-test-inpaint \"$model\" $scale \"$work/source.png\" \"$work/selection.png\"
      \"$work\")" inpaint
    # Strength 1, the procedure's default (the CLI's default for SDXL is 0.9999).
    cli inpaint "a blue bird" -i "$work/source.png" -m "$work/mask.png" --seed 5 --strength 1 \
      -o "$work/cli.png"
    expect_same "$work/gimp.png" "$work/cli.png"
    # Every pixel the selection leaves out is the source's, exactly.
    convert "$work/mask.png" -threshold 0 -negate "$work/outside.png"
    outside_changes=$(convert "$work/gimp.png" -alpha off "$work/source.png" -compose difference \
      -composite "$work/outside.png" -compose multiply -composite -format "%[max]" info:)
    [ "$outside_changes" = 0 ] || fail "pixels outside the selection changed"
    echo "pixels outside the selection: unchanged"
    ;;
  gray)
    make_picture 64 64 "$work/color.png"
    convert "$work/color.png" -colorspace Gray -depth 8 -type Grayscale "$work/source.png"
    cli img2img "a charcoal drawing" -i "$work/source.png" --seed 3 --strength 0.7 \
      -o "$work/cli.png"
    expect_passed "(lcm-test-gray \"$model\" \"$work/source.png\" \"$work/cli.png\" \"$work\")" gray
    expect_same "$work/gimp.png" "$work/cli-gray.png" 1
    ;;
  errors)
    status=0
    gimp_batch "(lcm-test-errors \"$model\" \"$work/no-such-model\")" || status=$?
    grep -q "LCM-TEST-CAUGHT-ALL" "$work/gimp.out" || fail "a wrong use was not refused"
    [ $status -eq $BATCH_FAILED ] || fail "a failing plug-in call gave status $status, not 70"
    for message in "2 layers are selected" "nothing is selected" "Indexed images are not" \
      "no-such-model: no such file"; do
      grep -q "$message" "$work/gimp.err" || fail "GIMP did not show the message '$message'"
    done
    ;;
  resident)
    # The resident process keeps the model between calls: the batch loads the
    # SD1.5 model once for two calls, then the SDXL one; the pictures equal
    # the CLI's. GIMP_LCM_RESIDENT_IDLE=0 frees the model after each call;
    # GIMP_LCM_RESIDENT=off runs each call in its own process.
    xl_model=$(realpath "$here/../data/golden-sdxl/tiny-sdxl-lcm")
    cli txt2img "a red fox in the snow" --seed 42 --width 64 --height 48 -o "$work/cli.png"
    cli txt2img "a red fox in the snow" --seed 42 --width 64 --height 48 --model "$xl_model" \
      -o "$work/cli-xl.png"
    # GLib writes debug messages to stdout.
    count() { grep -c "resident: $1" "$work/gimp.out" || true; }
    expect_resident() { # NAME LOADED REUSED FREED
      expect_passed "(lcm-test-resident \"$model\" \"$xl_model\" \"$work\")" resident
      expect_same "$work/gimp-1.png" "$work/cli.png"
      expect_same "$work/gimp-xl.png" "$work/cli-xl.png"
      echo "$1: loaded $(count 'pipeline loaded'), reused $(count 'pipeline reused'), freed $(count 'pipeline freed')"
      [ "$(count 'pipeline loaded')" = "$2" ] && [ "$(count 'pipeline reused')" = "$3" ] &&
        [ "$(count 'pipeline freed')" = "$4" ] || fail "$1: expected loaded $2, reused $3, freed $4"
    }
    export G_MESSAGES_DEBUG=gimp-lcm
    expect_resident "resident" 2 1 1
    expect_same "$work/gimp-2.png" "$work/cli.png"
    GIMP_LCM_RESIDENT_IDLE=0 expect_resident "freed after each call" 3 0 3
    expect_same "$work/gimp-2.png" "$work/cli.png"
    rm -f "$work/gimp-2.png"
    GIMP_LCM_RESIDENT=off expect_resident "resident off" 0 0 0
    [ ! -e "$work/gimp-2.png" ] || fail "the resident's procedures exist with GIMP_LCM_RESIDENT=off"
    ;;
  *)
    echo "unknown test '$test_name'" >&2
    exit 2
    ;;
esac
echo "PASS ($test_name)"
