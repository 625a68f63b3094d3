/* gimp-lcm-cli's pictures: PNG or JPEG in (GdkPixbuf), PNG out. */
#pragma once

#include "lcm.h"

#include <gdk-pixbuf/gdk-pixbuf.h>

/* The source picture as RGB in [0, 1] (alpha ignored); its sides must be
 * multiples of 8. */
LcmImage *picture_load_source(const char *path, GError **error);
/* The inpainting mask: Rec. 709 luminance (rounded to 8 bits, so grey levels
 * are exact) times alpha, in [0, 1], at the size of `source` (read from
 * `source_path`, named in messages). */
LcmImage *picture_load_mask(const char *path, const LcmImage *source, const char *source_path,
                            GError **error);
/* 8-bit RGB PNG, each value round(clamp(x, 0, 1) x 255). */
gboolean picture_save_png(const LcmImage *image, const char *path, GError **error);
