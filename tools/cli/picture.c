/* Pictures in and out of gimp-lcm-cli: PNG or JPEG to LcmImage sources and
 * masks, LcmImage to PNG. The files are the user's, or a stranger's: the
 * format is checked by its first bytes and the size from the header before
 * anything is decoded. */
#include "picture.h"

#include <math.h>
#include <string.h>

/* The formats read, by their first bytes. GdkPixbuf's other loaders (BMP,
 * GIF, ICO, TGA, ...) are left out: fuzzing found its BMP loader allocating
 * 2 GB for a 178-byte file's header, before any size could be checked. */
static const struct {
  const char *magic;
  size_t length;
  const char *type; /* GdkPixbuf's loader name */
} picture_formats[] = {
    {"\x89PNG\r\n\x1a\n", 8, "png"},
    {"\xff\xd8\xff", 3, "jpeg"},
};

/* The loader name of a PNG or JPEG file, by its first bytes; NULL with an
 * error for anything else. */
static const char *picture_format(const char *path, const guint8 *bytes, gsize length,
                                  GError **error) {
  for (size_t i = 0; i < G_N_ELEMENTS(picture_formats); i++)
    if (length >= picture_formats[i].length &&
        memcmp(bytes, picture_formats[i].magic, picture_formats[i].length) == 0)
      return picture_formats[i].type;
  g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
              "%s: not a PNG or JPEG picture (the only formats read; convert it to PNG)", path);
  return NULL;
}

/* Far above what the models generate at (a 4096 x 4096 SDXL canvas already
 * needs tens of GB), and it keeps a 250-byte JPEG announcing 15624 x 2048
 * pixels (found by fuzz-image) from costing seconds and a GB to decode. */
#define PICTURE_MAX_PIXELS (16 * 1024 * 1024)

static guint32 read_be(const guint8 *bytes, int count) {
  guint32 value = 0;
  for (int i = 0; i < count; i++) value = value << 8 | bytes[i];
  return value;
}

/* The size a JPEG's frame header (its first SOFn segment) announces. Bytes
 * between segments are skipped up to the next marker, as libjpeg does. */
static gboolean jpeg_header_size(const guint8 *bytes, gsize length, int *width, int *height) {
  gsize at = 2; /* after SOI */
  for (;;) {
    while (at < length && bytes[at] != 0xff) at++;
    while (at < length && bytes[at] == 0xff) at++; /* fill bytes */
    if (at >= length) return FALSE;
    guint8 marker = bytes[at++];
    if (marker == 0x00 || marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7))
      continue; /* a stuffed byte or a marker without a length */
    if (marker == 0xd9 || marker == 0xda) return FALSE; /* EOI or scan data before a frame */
    if (at + 2 > length) return FALSE;
    gsize segment = read_be(bytes + at, 2);
    gboolean frame = marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 &&
                     marker != 0xcc; /* DHT, JPG and DAC share the range */
    if (frame) {
      if (segment < 8 || at + 7 > length) return FALSE;
      *height = (int)read_be(bytes + at + 3, 2);
      *width = (int)read_be(bytes + at + 5, 2);
      return TRUE;
    }
    if (segment < 2) return FALSE;
    at += segment;
  }
}

/* The size a PNG or JPEG file's header announces, read here rather than by
 * gdk_pixbuf_get_file_info: that fails on some JPEGs that then decode (a
 * 202-byte one announcing 32776 x 2048, found by fuzz-image, decoded into a
 * GB), so its answer cannot guard the decoder. */
static gboolean picture_header_size(const char *path, const char *type, const guint8 *bytes,
                                    gsize length, int *width, int *height, GError **error) {
  gboolean found = FALSE;
  if (strcmp(type, "png") == 0) {
    /* IHDR is the first chunk: length, type, then width and height */
    found = length >= 24 && memcmp(bytes + 12, "IHDR", 4) == 0;
    if (found) {
      guint32 w = read_be(bytes + 16, 4), h = read_be(bytes + 20, 4);
      *width = (int)MIN(w, (guint32)G_MAXINT);
      *height = (int)MIN(h, (guint32)G_MAXINT);
    }
  } else {
    found = jpeg_header_size(bytes, length, width, height);
  }
  if (!found || *width < 1 || *height < 1) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: damaged %s picture (no size in its header)", path, type);
    return FALSE;
  }
  return TRUE;
}

/* Reads a PNG or JPEG picture as 8-bit RGBA-or-RGB rows. */
static GdkPixbuf *picture_decode(const char *path, GError **error) {
  g_autofree guint8 *bytes = NULL;
  gsize length = 0;
  GError *local = NULL;
  if (!g_file_get_contents(path, (char **)&bytes, &length, &local)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: cannot open (%s)", path, local->message);
    g_error_free(local);
    return NULL;
  }
  const char *type = picture_format(path, bytes, length, error);
  if (!type) return NULL;
  /* The size its header announces, checked before the decoder allocates it:
   * a 200-byte PNG can announce 20000 x 20000 pixels, 1.2 GB of RGB. */
  int width = 0, height = 0;
  if (!picture_header_size(path, type, bytes, length, &width, &height, error)) return NULL;
  if (width > LCM_MAX_IMAGE_SIDE || height > LCM_MAX_IMAGE_SIDE ||
      (gint64)width * height > PICTURE_MAX_PIXELS) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                "%s is %dx%d pixels; pictures of at most %d pixels per side and %d megapixels "
                "are read (scale it down)",
                path, width, height, LCM_MAX_IMAGE_SIDE, PICTURE_MAX_PIXELS / (1024 * 1024));
    return NULL;
  }
  /* Decoded from the file, not from the bytes read above: GdkPixbuf's
   * in-memory (incremental) loader accepts a PNG cut short as a picture. */
  GdkPixbuf *pixbuf = gdk_pixbuf_new_from_file(path, &local);
  /* A loader may return the part it read of a damaged file along with an
   * error (GIF's did): that is a damaged file too. */
  if (local || !pixbuf) {
    g_clear_object(&pixbuf);
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: damaged %s picture (%s)", path, type,
                local ? local->message : "no image in it");
    g_clear_error(&local);
    return NULL;
  }
  if (gdk_pixbuf_get_width(pixbuf) != width || gdk_pixbuf_get_height(pixbuf) != height) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: damaged %s picture (its header announces %dx%d pixels, it holds %dx%d)", path,
                type, width, height, gdk_pixbuf_get_width(pixbuf), gdk_pixbuf_get_height(pixbuf));
    g_object_unref(pixbuf);
    return NULL;
  }
  int channels = gdk_pixbuf_get_n_channels(pixbuf);
  if (gdk_pixbuf_get_bits_per_sample(pixbuf) != 8 || (channels != 3 && channels != 4)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: unsupported pixel layout (%d channels of %d bits)", path, channels,
                gdk_pixbuf_get_bits_per_sample(pixbuf));
    g_object_unref(pixbuf);
    return NULL;
  }
  return pixbuf;
}

static gboolean check_source_size(const char *path, int width, int height, GError **error) {
  if (width % 8 == 0 && height % 8 == 0) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
              "%s is %dx%d pixels; img2img and inpaint need sides that are multiples of 8 "
              "(crop or scale it, e.g. to %dx%d)",
              path, width, height, MAX(8, width / 8 * 8), MAX(8, height / 8 * 8));
  return FALSE;
}

LcmImage *picture_load_source(const char *path, GError **error) {
  GdkPixbuf *pixbuf = picture_decode(path, error);
  if (!pixbuf) return NULL;
  int width = gdk_pixbuf_get_width(pixbuf), height = gdk_pixbuf_get_height(pixbuf);
  LcmImage *image = NULL;
  if (check_source_size(path, width, height, error)) {
    int channels = gdk_pixbuf_get_n_channels(pixbuf), stride = gdk_pixbuf_get_rowstride(pixbuf);
    const guint8 *pixels = gdk_pixbuf_read_pixels(pixbuf);
    image = lcm_image_new(width, height, 3);
    for (int y = 0; y < height; y++)
      for (int x = 0; x < width; x++)
        for (int c = 0; c < 3; c++)
          image->data[((size_t)y * width + x) * 3 + c] =
              pixels[(size_t)y * stride + (size_t)x * channels + c] / 255.0f;
  }
  g_object_unref(pixbuf);
  return image;
}

LcmImage *picture_load_mask(const char *path, const LcmImage *source, const char *source_path,
                            GError **error) {
  GdkPixbuf *pixbuf = picture_decode(path, error);
  if (!pixbuf) return NULL;
  int width = gdk_pixbuf_get_width(pixbuf), height = gdk_pixbuf_get_height(pixbuf);
  LcmImage *mask = NULL;
  if (width != source->width || height != source->height) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                "%s is %dx%d pixels but %s is %dx%d; the mask must have the source's size", path,
                width, height, source_path, source->width, source->height);
  } else {
    int channels = gdk_pixbuf_get_n_channels(pixbuf), stride = gdk_pixbuf_get_rowstride(pixbuf);
    const guint8 *pixels = gdk_pixbuf_read_pixels(pixbuf);
    mask = lcm_image_new(width, height, 1);
    for (int y = 0; y < height; y++)
      for (int x = 0; x < width; x++) {
        const guint8 *p = pixels + (size_t)y * stride + (size_t)x * channels;
        int luminance = (2126 * p[0] + 7152 * p[1] + 722 * p[2] + 5000) / 10000;
        float alpha = channels == 4 ? p[3] / 255.0f : 1.0f;
        mask->data[(size_t)y * width + x] = luminance / 255.0f * alpha;
      }
  }
  g_object_unref(pixbuf);
  return mask;
}

gboolean picture_save_png(const LcmImage *image, const char *path, GError **error) {
  GdkPixbuf *pixbuf = gdk_pixbuf_new(GDK_COLORSPACE_RGB, FALSE, 8, image->width, image->height);
  if (!pixbuf) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: no memory for a %dx%d picture", path,
                image->width, image->height);
    return FALSE;
  }
  int stride = gdk_pixbuf_get_rowstride(pixbuf);
  guint8 *pixels = gdk_pixbuf_get_pixels(pixbuf);
  for (int y = 0; y < image->height; y++)
    for (int x = 0; x < image->width * 3; x++)
      pixels[(size_t)y * stride + x] =
          (guint8)roundf(CLAMP(image->data[(size_t)y * image->width * 3 + x], 0.0f, 1.0f) * 255.0f);
  gboolean ok = gdk_pixbuf_save(pixbuf, path, "png", error, NULL);
  g_object_unref(pixbuf);
  return ok;
}
