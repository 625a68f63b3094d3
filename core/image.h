/* Internal checks on LcmImage (core/image.c) shared with the pipelines. */
#pragma once

#include "lcm.h"

/* FALSE + LCM_ERROR_INVALID unless `image` is width x height with `channels`
 * channels; `what` names it in the message. */
gboolean image_check(const LcmImage *image, const char *what, int width, int height, int channels,
                     GError **error);
