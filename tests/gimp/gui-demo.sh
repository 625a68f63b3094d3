#!/bin/bash
# The plug-in in GIMP's GUI, driven like a user would (see docs/gimp-gui.md):
# opens Filters ▸ Generative ▸ Inpaint Selection (LCM)… on a picture with a
# feathered selection, types a prompt, presses Generate, checks that the new
# layer appears, that one Ctrl+Z takes it away and that Filters ▸ Repeat Last
# (Ctrl+F) runs again, then that a new GIMP finds the last values; saves
# screenshots.
#
#   tests/gimp/gui-demo.sh PLUGIN OUT_DIR [SCREENSHOT.png]
#
# Runs GIMP 3 under its own Xvfb (xvfb-run) with a throw-away profile; needs
# xdotool and ImageMagick. The model is the default one: the first in
# $GIMP_LCM_MODELS, else the bundled tiny test model (whose pictures are
# noise). SCREENSHOT gets the dialog and the result side by side.
# Exit status 0 when every step was seen.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 PLUGIN OUT_DIR [SCREENSHOT.png]" >&2
  exit 2
fi
if [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a -s "-screen 0 2000x1000x24" "$0" "$@"
fi
plugin=$(realpath "$1")
work=$(realpath -m "$2")
screenshot=${3:+$(realpath -m "$3")}
here=$(cd "$(dirname "$0")" && pwd)
# Each wait gives up after this many seconds.
WAIT_SECONDS=${WAIT_SECONDS:-120}

rm -rf "$work"
mkdir -p "$work/profile/plug-ins/gimp-lcm"
cp "$plugin" "$work/profile/plug-ins/gimp-lcm/gimp-lcm"
export GIMP3_DIRECTORY=$work/profile
export GIMP_LCM_MODELS=${GIMP_LCM_MODELS:-$work/models}
mkdir -p "$GIMP_LCM_MODELS"
convert -size 512x384 -seed 11 plasma:fractal -depth 8 -type TrueColor "PNG24:$work/picture.png"

gimp_pid=
finish() {
  [ -n "$gimp_pid" ] && kill "$gimp_pid" 2>/dev/null || true
}
trap finish EXIT
fail() {
  echo "FAIL: $*" >&2
  import -window root "$work/failure.png" 2>/dev/null || true
  echo "screen at the failure: $work/failure.png; GIMP's output: $work/gimp.out" >&2
  exit 1
}

# Waits until a window whose title matches appears (or, with "gone", goes).
wait_window() { # PATTERN [gone]
  for _ in $(seq $((WAIT_SECONDS * 4))); do
    if xdotool search --name "$1" >/dev/null 2>&1; then
      [ "${2:-}" != gone ] && return 0
    else
      [ "${2:-}" = gone ] && return 0
    fi
    sleep 0.25
  done
  fail "window '$1' ${2:-did not appear}"
}

# Waits until GIMP's session prints a line (lcm-gui-session's progress).
wait_output() { # TEXT MESSAGE
  for _ in $(seq $((WAIT_SECONDS * 4))); do
    grep -q "$1" "$work/gimp.out" && return 0
    kill -0 "$gimp_pid" 2>/dev/null || break
    sleep 0.25
  done
  fail "$2"
}

step() {
  echo "--- $*"
}

# GIMP shows the picture and waits (lcm-gui-session) for what follows; it
# quits when the session's checks are done.
timeout $((WAIT_SECONDS * 4)) gimp-3.0 --no-splash --quit \
  --batch-interpreter=plug-in-script-fu-eval \
  -b "(begin (load \"$here/lcm-tests.scm\") (lcm-gui-session \"$work/picture.png\"))" \
  >"$work/gimp.out" 2>&1 &
gimp_pid=$!

step "waiting for the image window"
wait_window "RGB color"
sleep 2
image_window=$(xdotool search --name "RGB color" | head -1)
xdotool windowfocus "$image_window"

step "Filters ▸ Generative ▸ Inpaint Selection (LCM)…"
xdotool key alt+r # Filte_rs
sleep 2
xdotool key End Right # Generative is the last entry
sleep 2
import -window root "$work/1-menu.png"
xdotool key p # In_paint Selection (LCM)…
wait_window "Generate with LCM"
dialog=$(xdotool search --name "Generate with LCM" | head -1)
# No window manager: windows open at 0,0; put the dialog beside the image.
xdotool windowmove "$dialog" 990 0
sleep 1
eval "$(xdotool getwindowgeometry --shell "$dialog")" # WIDTH, HEIGHT
dialog_right=$((990 + WIDTH)) dialog_bottom=$HEIGHT

step "typing the prompt"
xdotool windowfocus "$dialog"
xdotool key alt+p # _Prompt
xdotool type --delay 30 "a small red bird on a branch"
sleep 10 # the live preview
import -window root "$work/2-dialog.png"

step "Generate"
xdotool key alt+g # _Generate
wait_window "Generate with LCM" gone
wait_window "Generating .LCM" gone
wait_output "LCM-GUI-LAYER" "no layer appeared"
sleep 2
import -window root "$work/3-result.png"
grep "LCM-GUI-LAYER" "$work/gimp.out"

step "Edit ▸ Undo (Ctrl+Z)"
xdotool windowfocus "$image_window"
xdotool key ctrl+z
wait_output "LCM-GUI-UNDONE" "the undo did not restore the picture"

step "Filters ▸ Repeat Last (Ctrl+F)"
xdotool key ctrl+f
for _ in $(seq $((WAIT_SECONDS * 4))); do
  kill -0 "$gimp_pid" 2>/dev/null || break
  sleep 0.25
done
wait "$gimp_pid" || fail "GIMP's session failed (see $work/gimp.out)"
gimp_pid=
grep -q "LCM-GUI-PASSED" "$work/gimp.out" || fail "Repeat Last did not run again"

step "a new GIMP with the same profile: RUN-WITH-LAST-VALS uses the stored values"
timeout "$WAIT_SECONDS" gimp-console-3.0 -i --quit --batch-interpreter=plug-in-script-fu-eval \
  -b "(begin (load \"$here/lcm-tests.scm\") (lcm-test-last-values \"$work/picture.png\"))" \
  >"$work/gimp-restart.out" 2>&1 || fail "the run with the last values failed ($work/gimp-restart.out)"
grep -q "LCM-TEST-PASSED last-values" "$work/gimp-restart.out" || fail "no last values after a restart"

if [ -n "$screenshot" ]; then
  # The dialog beside the picture, then the result (the GIMP window only).
  convert "$work/2-dialog.png" -crop "${dialog_right}x${dialog_bottom}+0+0" +repage \
    \( "$work/3-result.png" -crop 985x620+0+0 +repage \) -background '#303030' -append \
    -resize 1200x "$screenshot"
  echo "screenshot: $screenshot"
fi
echo "PASS: dialog opened from the menu, layer generated, one undo restored the picture, Repeat"
echo "Last ran again, and the last values survived a restart"
