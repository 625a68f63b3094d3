/* Downloads of catalogue entries from the Hugging Face Hub with libsoup 3.
 *
 * Per file: a HEAD request on {endpoint}/{repo}/resolve/{revision}/{path}
 * without following redirects gives what huggingface_hub reads there: the
 * size (X-Linked-Size, else Content-Length), the checksum (X-Linked-Etag for
 * LFS files: their sha256; else ETag: the git blob sha1) and the commit
 * (X-Repo-Commit). A GET (redirects followed, e.g. to the CDN) streams into
 * NAME.part in a hidden staging folder, continuing an earlier .part with a
 * Range request; the file is renamed once its size and checksum match. The
 * staging folder becomes the install folder when every file is in, with a
 * manifest of sizes and sha256 that lcm_catalogue_verify checks later.
 *
 * An entry may take its files from several repositories (its sources:
 * lcm-ssd-1b's UNet from latent-consistency/lcm-ssd-1b into unet/, the rest
 * from segmind/SSD-1B). They are one download: every HEAD of every source
 * first, one staging folder, one rename, so a model combined from several
 * repositories appears only once all of its parts are in. */
#include "lcm.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <libsoup/soup.h>
#include <string.h>
#include <sys/stat.h>

#define MANIFEST_NAME ".gimp-lcm-download.json"
#define RETRIES 3
#define IO_TIMEOUT_SECONDS 60
#define CHUNK_BYTES (256 * 1024)
#define PROGRESS_INTERVAL_US (G_USEC_PER_SEC / 8)

/* One file of an entry and what the Hub states about it. */
typedef struct {
  const LcmCatalogueSource *source; /* the repository it comes from */
  const char *repo_path;            /* its path there */
  const char *install_path;         /* its path inside the install folder */
  char *what;                       /* its name in messages and the progress */
  char *url;                        /* where to GET it */
  guint64 size;                     /* 0 when the Hub gave none */
  char *sha256;                     /* lowercase hex, or NULL */
  char *git_sha1;                   /* lowercase hex, or NULL */
  char *commit;                     /* X-Repo-Commit, or NULL */
  char *local_hash;                 /* sha256 of the file as downloaded (for the manifest) */
  guint64 have;                     /* bytes already in the staging folder */
} RemoteFile;

typedef struct {
  const LcmCatalogueEntry *entry;
  SoupSession *session;
  GCancellable *cancellable;
  LcmDownloadProgressFunc progress;
  gpointer user_data;
  char *host; /* for messages */
  RemoteFile *files;
  int count;
  guint64 total, done;
  gint64 last_report_us, rate_since_us;
  guint64 rate_since_bytes;
  double rate;
} Download;

static void remote_file_clear(RemoteFile *file) {
  g_free(file->what);
  g_free(file->url);
  g_free(file->sha256);
  g_free(file->git_sha1);
  g_free(file->commit);
  g_free(file->local_hash);
}

/* ---- Errors a user can act on --------------------------------------------------- */

static gboolean cancelled(GError **error) {
  g_set_error(error, LCM_ERROR, LCM_ERROR_CANCELLED, "download cancelled");
  return FALSE;
}

/* A failed request, in words: offline, unreachable, cancelled... */
static gboolean network_error(const Download *d, const char *what, GError *cause, GError **error) {
  if (g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_CANCELLED)) {
    g_error_free(cause);
    return cancelled(error);
  }
  const char *advice = "";
  if (cause->domain == G_RESOLVER_ERROR)
    advice = ": the name does not resolve; are you offline?";
  else if (g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED) ||
           g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_NETWORK_UNREACHABLE) ||
           g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_HOST_UNREACHABLE) ||
           g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_TIMED_OUT))
    advice = ": check the internet connection (and HF_ENDPOINT if set)";
  else if (cause->domain == G_TLS_ERROR)
    advice = ": the secure connection failed";
  g_set_error(error, LCM_ERROR, LCM_ERROR_NETWORK, "%s: cannot download %s from %s (%s)%s",
              d->entry->name, what, d->host, cause->message, advice);
  g_error_free(cause);
  return FALSE;
}

static gboolean http_error(const Download *d, const char *what, SoupMessage *message,
                           GError **error) {
  guint status = soup_message_get_status(message);
  const char *reason = soup_message_get_reason_phrase(message);
  g_autofree char *url = g_uri_to_string(soup_message_get_uri(message));
  const char *advice =
      status == 404 ? "the repository, revision or file is not on the Hub (any more?)"
      : status == 401 || status == 403
          ? "the repository needs a Hugging Face login, which gimp-lcm does not do: download it "
            "with huggingface-cli, gimp-lcm then finds it in the cache"
      : status >= 500 ? "the Hub has a problem; try again later"
                      : "unexpected answer";
  g_set_error(error, LCM_ERROR, LCM_ERROR_NETWORK, "%s: %s: HTTP %u %s for %s: %s", d->entry->name,
              what, status, reason ? reason : "", url, advice);
  return FALSE;
}

static gboolean io_error(const Download *d, const char *path, GError *cause, GError **error) {
  if (g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_CANCELLED)) {
    g_error_free(cause);
    return cancelled(error);
  }
  if (g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_NO_SPACE)) {
    g_autofree char *dir = lcm_models_dir();
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO,
                "%s: the disk is full (writing %s). Free some space, or set GIMP_LCM_MODELS to a "
                "folder on a bigger disk (models go to %s); the download resumes where it "
                "stopped",
                d->entry->name, path, dir);
  } else {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: %s: %s", d->entry->name, path, cause->message);
  }
  g_error_free(cause);
  return FALSE;
}

/* ---- The Hub's statements ------------------------------------------------------- */

/* An ETag's hash: without W/ and quotes, lowercase; NULL when it is no hex hash
 * of `length` digits. */
static char *etag_hash(const char *etag, size_t length) {
  if (!etag) return NULL;
  if (g_str_has_prefix(etag, "W/")) etag += 2;
  g_autofree char *copy = g_strdup(etag);
  g_strstrip(copy);
  char *hash = copy;
  size_t n = strlen(hash);
  if (n >= 2 && hash[0] == '"' && hash[n - 1] == '"') {
    hash[n - 1] = '\0';
    hash++;
    n -= 2;
  }
  if (n != length) return NULL;
  for (size_t i = 0; i < n; i++)
    if (!g_ascii_isxdigit(hash[i])) return NULL;
  return g_ascii_strdown(hash, -1);
}

static guint64 header_size(SoupMessageHeaders *headers, const char *name) {
  const char *value = soup_message_headers_get_one(headers, name);
  guint64 size = 0;
  return value && g_ascii_string_to_unsigned(value, 10, 0, G_MAXUINT64, &size, NULL) ? size : 0;
}

static char *resolve_url(const char *endpoint, const RemoteFile *file) {
  g_autofree char *revision = g_uri_escape_string(file->source->revision, NULL, FALSE);
  g_autofree char *escaped = g_uri_escape_string(file->repo_path, "/", FALSE);
  return g_strdup_printf("%s/%s/resolve/%s/%s", endpoint, file->source->repo, revision, escaped);
}

/* HEAD without following the CDN redirect, whose response carries the
 * X-Linked-* headers; relative redirects (a renamed repository) are followed. */
static gboolean head_file(Download *d, const char *url, RemoteFile *file, const char *what,
                          GError **error) {
  g_autofree char *current = g_strdup(url);
  for (int hops = 0; hops < 5; hops++) {
    g_autoptr(SoupMessage) message = soup_message_new(SOUP_METHOD_HEAD, current);
    if (!message) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "%s: bad download address %s",
                  d->entry->name, current);
      return FALSE;
    }
    soup_message_add_flags(message, SOUP_MESSAGE_NO_REDIRECT);
    SoupMessageHeaders *request = soup_message_get_request_headers(message);
    soup_message_headers_replace(request, "Accept-Encoding", "identity");
    GError *cause = NULL;
    g_autoptr(GBytes) body =
        soup_session_send_and_read(d->session, message, d->cancellable, &cause);
    if (!body) return network_error(d, what, cause, error);
    guint status = soup_message_get_status(message);
    SoupMessageHeaders *headers = soup_message_get_response_headers(message);
    const char *location = soup_message_headers_get_one(headers, "Location");
    const char *linked_etag = soup_message_headers_get_one(headers, "X-Linked-Etag");
    if (SOUP_STATUS_IS_REDIRECTION(status) && location && !linked_etag &&
        !strstr(location, "://")) {
      g_autoptr(GUri) next =
          g_uri_parse_relative(soup_message_get_uri(message), location, G_URI_FLAGS_ENCODED, NULL);
      if (!next) break;
      g_free(current);
      current = g_uri_to_string(next);
      continue;
    }
    if (!SOUP_STATUS_IS_SUCCESSFUL(status) && !SOUP_STATUS_IS_REDIRECTION(status))
      return http_error(d, what, message, error);
    file->size = header_size(headers, "X-Linked-Size");
    if (!file->size) file->size = header_size(headers, "Content-Length");
    file->sha256 = etag_hash(linked_etag, 64);
    if (!linked_etag) {
      const char *etag = soup_message_headers_get_one(headers, "ETag");
      file->sha256 = etag_hash(etag, 64);
      file->git_sha1 = etag_hash(etag, 40);
    }
    file->commit = g_strdup(soup_message_headers_get_one(headers, "X-Repo-Commit"));
    file->url = g_strdup(current);
    return TRUE;
  }
  g_set_error(error, LCM_ERROR, LCM_ERROR_NETWORK, "%s: %s: too many redirects from %s",
              d->entry->name, what, d->host);
  return FALSE;
}

/* ---- Files ---------------------------------------------------------------------- */

static guint64 file_size(const char *path) {
  GStatBuf st;
  return g_stat(path, &st) == 0 && S_ISREG(st.st_mode) ? (guint64)st.st_size : 0;
}

/* Hashes the first `length` bytes of path into the checksums (NULL skipped). */
static gboolean hash_file(const char *path, guint64 length, GChecksum *sha256, GChecksum *sha1,
                          GCancellable *cancellable, GError **error) {
  g_autoptr(GFile) file = g_file_new_for_path(path);
  g_autoptr(GFileInputStream) in = g_file_read(file, cancellable, error);
  if (!in) return FALSE;
  g_autofree guchar *buffer = g_malloc(CHUNK_BYTES);
  while (length > 0) {
    gssize n = g_input_stream_read(G_INPUT_STREAM(in), buffer, MIN(length, CHUNK_BYTES),
                                   cancellable, error);
    if (n < 0) return FALSE;
    if (n == 0) break;
    g_checksum_update(sha256, buffer, n);
    if (sha1) g_checksum_update(sha1, buffer, n);
    length -= (guint64)n;
  }
  return TRUE;
}

/* A git blob's sha1 is that of "blob SIZE\0" followed by the content. */
static GChecksum *git_blob_checksum(guint64 size) {
  GChecksum *sha1 = g_checksum_new(G_CHECKSUM_SHA1);
  g_autofree char *header = g_strdup_printf("blob %" G_GUINT64_FORMAT, size);
  g_checksum_update(sha1, (const guchar *)header, (gssize)strlen(header) + 1);
  return sha1;
}

static void report(Download *d, int index, gboolean force) {
  if (!d->progress) return;
  gint64 now = g_get_monotonic_time();
  if (!force && now - d->last_report_us < PROGRESS_INTERVAL_US) return;
  d->last_report_us = now;
  /* The rate over the last few seconds, restarted every 4 s. */
  double elapsed = (now - d->rate_since_us) / (double)G_USEC_PER_SEC;
  if (elapsed > 0.5) d->rate = (d->done - d->rate_since_bytes) / elapsed;
  if (elapsed > 4.0) {
    d->rate_since_us = now;
    d->rate_since_bytes = d->done;
  }
  LcmDownloadProgress p = {
      .file = d->files[index].what,
      .file_index = index,
      .file_count = d->count,
      .done = d->done,
      .total = d->total,
      .bytes_per_second = d->rate,
      .seconds_left = d->rate > 0 && d->total >= d->done ? (d->total - d->done) / d->rate : -1,
  };
  d->progress(&p, d->user_data);
}

/* Whether a failure is worth another attempt from where it stopped. */
static gboolean transient(const GError *error) {
  return error->domain == SOUP_SESSION_ERROR ||
         g_error_matches(error, G_IO_ERROR, G_IO_ERROR_PARTIAL_INPUT) ||
         g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED) ||
         g_error_matches(error, G_IO_ERROR, G_IO_ERROR_BROKEN_PIPE) ||
         g_error_matches(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT) ||
         g_error_matches(error, G_IO_ERROR, G_IO_ERROR_FAILED);
}

typedef enum { FETCH_OK, FETCH_RETRY, FETCH_FAILED } FetchResult;

/* One GET of the rest of a file into part_path. */
static FetchResult fetch_once(Download *d, int index, const char *part_path, GError **error) {
  RemoteFile *file = &d->files[index];
  const char *what = d->files[index].what;
  guint64 have = file_size(part_path);
  if (file->size && have > file->size) have = 0; /* longer than the file: start again */
  g_autoptr(SoupMessage) message = soup_message_new(SOUP_METHOD_GET, file->url);
  SoupMessageHeaders *request = soup_message_get_request_headers(message);
  soup_message_headers_replace(request, "Accept-Encoding", "identity");
  if (have > 0) soup_message_headers_set_range(request, (goffset)have, -1);
  GError *cause = NULL;
  g_autoptr(GInputStream) in = soup_session_send(d->session, message, d->cancellable, &cause);
  if (!in) {
    if (!g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_CANCELLED) && transient(cause)) {
      g_propagate_error(error, cause);
      return FETCH_RETRY;
    }
    network_error(d, what, cause, error);
    return FETCH_FAILED;
  }
  guint status = soup_message_get_status(message);
  if (status == SOUP_STATUS_OK) {
    have = 0; /* the server sends the whole file */
  } else if (status == SOUP_STATUS_REQUESTED_RANGE_NOT_SATISFIABLE && have > 0) {
    have = 0;
    g_input_stream_close(in, NULL, NULL);
    g_autoptr(GFile) part = g_file_new_for_path(part_path);
    g_file_delete(part, NULL, NULL);
    return FETCH_RETRY;
  } else if (status != SOUP_STATUS_PARTIAL_CONTENT || have == 0) {
    http_error(d, what, message, error);
    return FETCH_FAILED;
  }
  d->done -= file->have;
  file->have = have;
  d->done += have;

  g_autoptr(GFile) part = g_file_new_for_path(part_path);
  GError *write_error = NULL;
  g_autoptr(GFileOutputStream) out = g_file_append_to(part, G_FILE_CREATE_NONE, NULL, &write_error);
  if (out && have == 0 && g_seekable_can_truncate(G_SEEKABLE(out)))
    g_seekable_truncate(G_SEEKABLE(out), 0, NULL, NULL);
  if (!out) {
    io_error(d, part_path, write_error, error);
    return FETCH_FAILED;
  }
  g_autofree guchar *buffer = g_malloc(CHUNK_BYTES);
  for (;;) {
    gssize n = g_input_stream_read(in, buffer, CHUNK_BYTES, d->cancellable, &cause);
    if (n < 0) {
      g_output_stream_close(G_OUTPUT_STREAM(out), NULL, NULL);
      if (!g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_CANCELLED) && transient(cause)) {
        g_propagate_error(error, cause);
        return FETCH_RETRY;
      }
      network_error(d, what, cause, error);
      return FETCH_FAILED;
    }
    if (n == 0) break;
    if (!g_output_stream_write_all(G_OUTPUT_STREAM(out), buffer, n, NULL, NULL, &write_error)) {
      g_output_stream_close(G_OUTPUT_STREAM(out), NULL, NULL);
      io_error(d, part_path, write_error, error);
      return FETCH_FAILED;
    }
    file->have += (guint64)n;
    d->done += (guint64)n;
    report(d, index, FALSE);
  }
  if (!g_output_stream_close(G_OUTPUT_STREAM(out), NULL, &write_error)) {
    io_error(d, part_path, write_error, error);
    return FETCH_FAILED;
  }
  if (file->size && file->have < file->size) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_NETWORK, "%s: the connection ended early", what);
    return FETCH_RETRY;
  }
  return FETCH_OK;
}

/* Checks `path` against what the Hub states; records its sha256. */
static gboolean check_file(Download *d, int index, const char *path, GError **error) {
  RemoteFile *file = &d->files[index];
  const char *what = d->files[index].what;
  guint64 size = file_size(path);
  if (file->size && size != file->size) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_CHECKSUM,
                "%s: %s has %" G_GUINT64_FORMAT " bytes, the Hub states %" G_GUINT64_FORMAT
                "; it was discarded and nothing was installed",
                d->entry->name, what, size, file->size);
    return FALSE;
  }
  g_autoptr(GChecksum) sha256 = g_checksum_new(G_CHECKSUM_SHA256);
  g_autoptr(GChecksum) sha1 = file->git_sha1 ? git_blob_checksum(size) : NULL;
  GError *cause = NULL;
  if (!hash_file(path, size, sha256, sha1, d->cancellable, &cause))
    return io_error(d, path, cause, error);
  const char *expected = file->sha256 ? file->sha256 : file->git_sha1;
  const char *got = g_checksum_get_string(file->sha256 || !sha1 ? sha256 : sha1);
  if (expected && strcmp(expected, got) != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_CHECKSUM,
                "%s: %s does not match the checksum the Hub states (%s %s, got %s); it was "
                "discarded and nothing was installed",
                d->entry->name, what, file->sha256 ? "sha256" : "git sha1", expected, got);
    return FALSE;
  }
  g_free(file->local_hash);
  file->local_hash = g_strdup(g_checksum_get_string(sha256));
  return TRUE;
}

/* Makes staging/PATH a verified copy of file `index`. */
static gboolean fetch_file(Download *d, int index, const char *staging, GError **error) {
  RemoteFile *file = &d->files[index];
  g_autofree char *path = g_build_filename(staging, file->install_path, NULL);
  g_autofree char *part_path = g_strconcat(path, ".part", NULL);
  g_autofree char *parent = g_path_get_dirname(path);
  if (g_mkdir_with_parents(parent, 0755) != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: cannot create %s: %s", d->entry->name, parent,
                g_strerror(errno));
    return FALSE;
  }
  /* A file finished by an earlier run counts if it still matches the Hub. */
  if (g_file_test(path, G_FILE_TEST_IS_REGULAR)) {
    if (check_file(d, index, path, NULL)) return TRUE;
    g_unlink(path);
  }
  for (int attempt = 0;; attempt++) {
    if (g_cancellable_is_cancelled(d->cancellable)) return cancelled(error);
    GError *attempt_error = NULL;
    FetchResult result = fetch_once(d, index, part_path, &attempt_error);
    if (result == FETCH_OK) break;
    if (result == FETCH_FAILED || attempt + 1 >= RETRIES) {
      if (result == FETCH_RETRY) return network_error(d, file->what, attempt_error, error);
      g_propagate_error(error, attempt_error);
      return FALSE;
    }
    g_debug("%s: %s; resuming", file->what, attempt_error->message);
    g_error_free(attempt_error);
    g_usleep(G_USEC_PER_SEC / 5 * (attempt + 1));
  }
  GError *check_error = NULL;
  if (!check_file(d, index, part_path, &check_error)) {
    if (g_error_matches(check_error, LCM_ERROR, LCM_ERROR_CHECKSUM)) {
      g_unlink(part_path);
      d->done -= file->have;
      file->have = 0;
    }
    g_propagate_error(error, check_error);
    return FALSE;
  }
  if (g_rename(part_path, path) != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: cannot rename %s: %s", d->entry->name,
                part_path, g_strerror(errno));
    return FALSE;
  }
  return TRUE;
}

static gboolean write_manifest(const Download *d, const char *staging, GError **error) {
  g_autoptr(JsonBuilder) b = json_builder_new();
  json_builder_begin_object(b);
  json_builder_set_member_name(b, "name");
  json_builder_add_string_value(b, d->entry->name);
  /* Each repository with the commit its revision was at. */
  json_builder_set_member_name(b, "sources");
  json_builder_begin_array(b);
  for (int s = 0; s < d->entry->n_sources; s++) {
    const LcmCatalogueSource *source = &d->entry->sources[s];
    const char *commit = "";
    for (int i = 0; i < d->count && !*commit; i++)
      if (d->files[i].source == source && d->files[i].commit) commit = d->files[i].commit;
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "repo");
    json_builder_add_string_value(b, source->repo);
    json_builder_set_member_name(b, "revision");
    json_builder_add_string_value(b, source->revision);
    json_builder_set_member_name(b, "commit");
    json_builder_add_string_value(b, commit);
    json_builder_set_member_name(b, "into");
    json_builder_add_string_value(b, source->into);
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_set_member_name(b, "files");
  json_builder_begin_array(b);
  for (int i = 0; i < d->count; i++) {
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "path");
    json_builder_add_string_value(b, d->files[i].install_path);
    json_builder_set_member_name(b, "size");
    json_builder_add_int_value(b, (gint64)d->files[i].have);
    json_builder_set_member_name(b, "sha256");
    json_builder_add_string_value(b, d->files[i].local_hash);
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_end_object(b);
  g_autoptr(JsonGenerator) generator = json_generator_new();
  g_autoptr(JsonNode) root = json_builder_get_root(b);
  json_generator_set_root(generator, root);
  json_generator_set_pretty(generator, TRUE);
  g_autofree char *path = g_build_filename(staging, MANIFEST_NAME, NULL);
  GError *cause = NULL;
  if (!json_generator_to_file(generator, path, &cause)) return io_error(d, path, cause, error);
  return TRUE;
}

/* Free space where the staging folder lives must hold what is still missing. */
static gboolean check_free_space(const Download *d, const char *staging, GError **error) {
  g_autoptr(GFile) dir = g_file_new_for_path(staging);
  g_autoptr(GFileInfo) info =
      g_file_query_filesystem_info(dir, G_FILE_ATTRIBUTE_FILESYSTEM_FREE, NULL, NULL);
  if (!info || !g_file_info_has_attribute(info, G_FILE_ATTRIBUTE_FILESYSTEM_FREE)) return TRUE;
  guint64 free_bytes = g_file_info_get_attribute_uint64(info, G_FILE_ATTRIBUTE_FILESYSTEM_FREE);
  guint64 missing = d->total > d->done ? d->total - d->done : 0;
  if (missing <= free_bytes) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_IO,
              "%s needs %.1f MB more but the disk holding %s has only %.1f MB free: free some "
              "space, or set GIMP_LCM_MODELS to a folder on a bigger disk",
              d->entry->name, missing / 1e6, staging, free_bytes / 1e6);
  return FALSE;
}

static char *staging_dir_for(const char *install_dir) {
  g_autofree char *parent = g_path_get_dirname(install_dir);
  g_autofree char *base = g_path_get_basename(install_dir);
  g_autofree char *hidden = g_strconcat(".", base, ".download", NULL);
  return g_build_filename(parent, hidden, NULL);
}

static gboolean run_download(Download *d, const char *install_dir, GError **error) {
  g_autofree char *endpoint = lcm_hub_endpoint();
  g_autoptr(GUri) uri = g_uri_parse(endpoint, G_URI_FLAGS_NONE, NULL);
  d->host = g_strdup(uri && g_uri_get_host(uri) ? g_uri_get_host(uri) : endpoint);
  g_autofree char *staging = staging_dir_for(install_dir);
  if (g_mkdir_with_parents(staging, 0755) != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: cannot create %s: %s", d->entry->name, staging,
                g_strerror(errno));
    return FALSE;
  }
  /* Everything the Hub states first: the total for the progress and the
   * free-space check. */
  for (int i = 0; i < d->count; i++) {
    g_autofree char *url = resolve_url(endpoint, &d->files[i]);
    if (!head_file(d, url, &d->files[i], d->files[i].what, error)) return FALSE;
    g_autofree char *path = g_build_filename(staging, d->files[i].install_path, NULL);
    g_autofree char *part = g_strconcat(path, ".part", NULL);
    d->files[i].have =
        g_file_test(path, G_FILE_TEST_IS_REGULAR) ? file_size(path) : file_size(part);
    d->total += d->files[i].size;
    d->done += d->files[i].have;
  }
  if (!check_free_space(d, staging, error)) return FALSE;
  d->rate_since_us = g_get_monotonic_time();
  d->rate_since_bytes = d->done;
  for (int i = 0; i < d->count; i++) {
    report(d, i, TRUE);
    if (!fetch_file(d, i, staging, error)) return FALSE;
  }
  report(d, d->count - 1, TRUE);
  if (!write_manifest(d, staging, error)) return FALSE;
  if (g_rename(staging, install_dir) != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: cannot move %s to %s: %s", d->entry->name,
                staging, install_dir, g_strerror(errno));
    return FALSE;
  }
  return TRUE;
}

gboolean lcm_catalogue_download(const LcmCatalogueEntry *entry, LcmDownloadProgressFunc progress,
                                gpointer user_data, GCancellable *cancellable, GError **error) {
  if (!entry->supported) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s is a %s model, which this build of gimp-lcm does not run yet", entry->name,
                entry->family);
    return FALSE;
  }
  g_autofree char *install_dir = lcm_catalogue_install_dir(entry);
  g_autofree char *manifest = g_build_filename(install_dir, MANIFEST_NAME, NULL);
  if (g_file_test(manifest, G_FILE_TEST_IS_REGULAR)) return TRUE; /* installed earlier */
  if (g_file_test(install_dir, G_FILE_TEST_EXISTS)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO,
                "%s already exists and was not downloaded by gimp-lcm: move it away to download "
                "%s again",
                install_dir, entry->name);
    return FALSE;
  }
  Download d = {
      .entry = entry,
      .cancellable = cancellable,
      .progress = progress,
      .user_data = user_data,
      .count = (int)g_strv_length(entry->files),
  };
  d.files = g_new0(RemoteFile, d.count);
  /* entry->files are the install paths of every source's files, in order. */
  for (int s = 0, i = 0; s < entry->n_sources; s++) {
    const LcmCatalogueSource *source = &entry->sources[s];
    for (char **file = source->files; *file && i < d.count; file++, i++) {
      d.files[i].source = source;
      d.files[i].repo_path = *file;
      d.files[i].install_path = entry->files[i];
      /* Which repository, once there are several. */
      d.files[i].what = entry->n_sources > 1
                            ? g_strdup_printf("%s (%s)", entry->files[i], source->repo)
                            : g_strdup(entry->files[i]);
    }
  }
  /* Proxies come from the environment and GSettings as for any GIO program. */
  d.session = soup_session_new_with_options("user-agent", "gimp-lcm/" LCM_VERSION, "timeout",
                                            IO_TIMEOUT_SECONDS, NULL);
  gboolean ok = run_download(&d, install_dir, error);
  g_object_unref(d.session);
  for (int i = 0; i < d.count; i++) remote_file_clear(&d.files[i]);
  g_free(d.files);
  g_free(d.host);
  return ok;
}

gboolean lcm_catalogue_verify(const LcmCatalogueEntry *entry, GError **error) {
  g_autofree char *install_dir = lcm_catalogue_install_dir(entry);
  g_autofree char *manifest = g_build_filename(install_dir, MANIFEST_NAME, NULL);
  g_autoptr(JsonParser) parser = json_parser_new();
  if (!json_parser_load_from_file(parser, manifest, NULL)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                "%s is not installed in %s (gimp-lcm-cli models get %s downloads it)", entry->name,
                install_dir, entry->name);
    return FALSE;
  }
  JsonNode *root = json_parser_get_root(parser);
  JsonObject *object = JSON_NODE_HOLDS_OBJECT(root) ? json_node_get_object(root) : NULL;
  JsonArray *files = object && json_object_has_member(object, "files")
                         ? json_object_get_array_member(object, "files")
                         : NULL;
  if (!files) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: no file list", manifest);
    return FALSE;
  }
  for (guint i = 0; i < json_array_get_length(files); i++) {
    JsonObject *f = json_array_get_object_element(files, i);
    const char *name = f ? json_object_get_string_member_with_default(f, "path", NULL) : NULL;
    const char *expected = f ? json_object_get_string_member_with_default(f, "sha256", NULL) : NULL;
    gint64 size = f ? json_object_get_int_member_with_default(f, "size", -1) : -1;
    if (!name || !expected || size < 0 || strstr(name, "..")) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: file %u is malformed", manifest, i);
      return FALSE;
    }
    g_autofree char *path = g_build_filename(install_dir, name, NULL);
    guint64 have = file_size(path);
    g_autoptr(GChecksum) sha256 = g_checksum_new(G_CHECKSUM_SHA256);
    if (have != (guint64)size || !hash_file(path, have, sha256, NULL, NULL, NULL) ||
        strcmp(g_checksum_get_string(sha256), expected) != 0) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_CHECKSUM,
                  "%s: %s is damaged or changed (%" G_GUINT64_FORMAT " bytes, %" G_GINT64_FORMAT
                  " expected, or a different sha256): delete %s and download it again",
                  entry->name, name, have, size, install_dir);
      return FALSE;
    }
  }
  return TRUE;
}

static void append_bytes(GString *out, double bytes) {
  if (bytes >= 1e9)
    g_string_append_printf(out, "%.2f GB", bytes / 1e9);
  else
    g_string_append_printf(out, "%.1f MB", bytes / 1e6);
}

char *lcm_download_progress_text(const LcmDownloadProgress *p) {
  GString *text = g_string_new(NULL);
  append_bytes(text, (double)p->done);
  g_string_append(text, " of ");
  append_bytes(text, (double)p->total);
  if (p->bytes_per_second > 0) {
    g_string_append(text, ", ");
    append_bytes(text, p->bytes_per_second);
    g_string_append(text, "/s");
  }
  if (p->seconds_left >= 0) {
    int s = (int)(p->seconds_left + 0.5);
    g_string_append_printf(text, ", %d:%02d left", s / 60, s % 60);
  }
  g_string_append_printf(text, " (file %d/%d %s)", p->file_index + 1, p->file_count, p->file);
  return g_string_free(text, FALSE);
}
