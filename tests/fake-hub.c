/* The fake Hub of fake-hub.h. */
#include "fake-hub.h"

#include <gio/gio.h>
#include <libsoup/soup.h>
#include <string.h>

#define FAKE_COMMIT "0123456789abcdef0123456789abcdef01234567"
#define STALL_BYTES (64 * 1024)

struct FakeHub {
  GThread *thread;
  GMainContext *context;
  GMainLoop *loop;
  SoupServer *server;
  char *endpoint;
  GMutex lock; /* guards repos, mode and dropped */
  GCond ready;
  GHashTable *repos;   /* repo id -> folder */
  GHashTable *dropped; /* CDN paths already dropped once */
  FakeHubMode mode;
  int requests, range_requests;
};

char *fake_hub_sha256_of(const char *path) {
  g_autofree char *data = NULL;
  gsize length = 0;
  if (!g_file_get_contents(path, &data, &length, NULL)) return NULL;
  return g_compute_checksum_for_data(G_CHECKSUM_SHA256, (const guchar *)data, length);
}

static char *git_blob_sha1(const char *data, gsize length) {
  GChecksum *sha1 = g_checksum_new(G_CHECKSUM_SHA1);
  g_autofree char *header = g_strdup_printf("blob %" G_GSIZE_FORMAT, length);
  g_checksum_update(sha1, (const guchar *)header, (gssize)strlen(header) + 1);
  g_checksum_update(sha1, (const guchar *)data, (gssize)length);
  char *hex = g_strdup(g_checksum_get_string(sha1));
  g_checksum_free(sha1);
  return hex;
}

/* The local file behind ORG/NAME + PATH, or NULL. */
static char *local_file(FakeHub *hub, const char *org, const char *name, const char *path) {
  g_autofree char *repo = g_strdup_printf("%s/%s", org, name);
  g_mutex_lock(&hub->lock);
  const char *dir = g_hash_table_lookup(hub->repos, repo);
  char *file = dir && !strstr(path, "..") ? g_build_filename(dir, path, NULL) : NULL;
  g_mutex_unlock(&hub->lock);
  if (file && !g_file_test(file, G_FILE_TEST_IS_REGULAR)) g_clear_pointer(&file, g_free);
  return file;
}

static FakeHubMode current_mode(FakeHub *hub) {
  g_mutex_lock(&hub->lock);
  FakeHubMode mode = hub->mode;
  g_mutex_unlock(&hub->lock);
  return mode;
}

static gboolean shut_down_socket(gpointer data) {
  GSocket *socket = data;
  g_socket_shutdown(socket, TRUE, TRUE, NULL);
  return G_SOURCE_REMOVE;
}

/* /ORG/NAME/resolve/REV/PATH: LFS files redirect to the CDN, others answer. */
static void serve_resolve(FakeHub *hub, SoupServerMessage *msg, char **parts) {
  g_autofree char *path = g_strjoinv("/", parts + 4);
  g_autofree char *file = local_file(hub, parts[0], parts[1], path);
  SoupMessageHeaders *headers = soup_server_message_get_response_headers(msg);
  if (!file || current_mode(hub) == FAKE_HUB_NOT_FOUND) {
    soup_server_message_set_status(msg, SOUP_STATUS_NOT_FOUND, NULL);
    soup_message_headers_replace(headers, "X-Error-Code", "EntryNotFound");
    return;
  }
  g_autofree char *data = NULL;
  gsize length = 0;
  g_file_get_contents(file, &data, &length, NULL);
  soup_message_headers_replace(headers, "X-Repo-Commit", FAKE_COMMIT);
  if (g_str_has_suffix(path, ".safetensors")) {
    g_autofree char *sha = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, length);
    if (current_mode(hub) == FAKE_HUB_WRONG_CHECKSUM) sha[0] = sha[0] == '0' ? '1' : '0';
    g_autofree char *etag = g_strdup_printf("\"%s\"", sha);
    g_autofree char *size = g_strdup_printf("%" G_GSIZE_FORMAT, length);
    g_autofree char *location =
        g_strdup_printf("%s/cdn/%s/%s/%s", hub->endpoint, parts[0], parts[1], path);
    soup_message_headers_replace(headers, "X-Linked-Etag", etag);
    soup_message_headers_replace(headers, "X-Linked-Size", size);
    soup_message_headers_replace(headers, "ETag", etag);
    soup_message_headers_replace(headers, "Location", location);
    soup_server_message_set_status(msg, SOUP_STATUS_FOUND, NULL);
    return;
  }
  g_autofree char *sha1 = git_blob_sha1(data, length);
  g_autofree char *etag = g_strdup_printf("\"%s\"", sha1);
  soup_message_headers_replace(headers, "ETag", etag);
  soup_server_message_set_status(msg, SOUP_STATUS_OK, NULL);
  soup_server_message_set_response(msg, "application/octet-stream", SOUP_MEMORY_COPY, data, length);
}

/* /cdn/ORG/NAME/PATH: the bytes, with Range requests and the fault modes. */
static void serve_cdn(FakeHub *hub, SoupServerMessage *msg, char **parts) {
  g_autofree char *path = g_strjoinv("/", parts + 3);
  g_autofree char *file = local_file(hub, parts[1], parts[2], path);
  if (!file) {
    soup_server_message_set_status(msg, SOUP_STATUS_NOT_FOUND, NULL);
    return;
  }
  FakeHubMode mode = current_mode(hub);
  if (mode == FAKE_HUB_SERVER_ERROR) {
    soup_server_message_set_status(msg, SOUP_STATUS_INTERNAL_SERVER_ERROR, NULL);
    return;
  }
  gsize length = 0;
  char *data = NULL;
  g_file_get_contents(file, &data, &length, NULL);
  SoupMessageHeaders *request = soup_server_message_get_request_headers(msg);
  SoupMessageHeaders *headers = soup_server_message_get_response_headers(msg);
  SoupMessageBody *body = soup_server_message_get_response_body(msg);
  soup_message_headers_replace(headers, "Accept-Ranges", "bytes");
  SoupRange *ranges = NULL;
  int n_ranges = 0;
  if (soup_message_headers_get_one(request, "Range")) {
    g_atomic_int_inc(&hub->range_requests);
    if (!soup_message_headers_get_ranges(request, (goffset)length, &ranges, &n_ranges) ||
        n_ranges != 1) {
      soup_server_message_set_status(msg, SOUP_STATUS_REQUESTED_RANGE_NOT_SATISFIABLE, NULL);
      g_free(data);
      return;
    }
    gsize start = (gsize)ranges[0].start, end = (gsize)ranges[0].end;
    soup_message_headers_free_ranges(request, ranges);
    soup_server_message_set_status(msg, SOUP_STATUS_PARTIAL_CONTENT, NULL);
    soup_message_headers_set_content_range(headers, (goffset)start, (goffset)end, (goffset)length);
    soup_message_body_append(body, SOUP_MEMORY_COPY, data + start, end - start + 1);
    soup_message_body_complete(body);
    g_free(data);
    return;
  }
  gboolean drop = FALSE;
  if (mode == FAKE_HUB_DROP_ONCE) {
    g_mutex_lock(&hub->lock);
    drop = g_hash_table_add(hub->dropped, g_strdup(path));
    g_mutex_unlock(&hub->lock);
  }
  soup_server_message_set_status(msg, SOUP_STATUS_OK, NULL);
  if (!drop && mode != FAKE_HUB_STALL) {
    soup_message_body_append_take(body, (guchar *)data, length);
    return;
  }
  /* Part of the body, then silence (stall) or a closed connection (drop). */
  soup_message_headers_set_encoding(headers, SOUP_ENCODING_CONTENT_LENGTH);
  soup_message_headers_set_content_length(headers, (goffset)length);
  soup_message_body_append(body, SOUP_MEMORY_COPY, data,
                           mode == FAKE_HUB_STALL ? MIN(length, STALL_BYTES) : length / 2);
  g_free(data);
  if (drop) {
    GSource *timeout = g_timeout_source_new(300);
    g_source_set_callback(timeout, shut_down_socket,
                          g_object_ref(soup_server_message_get_socket(msg)), g_object_unref);
    g_source_attach(timeout, hub->context);
    g_source_unref(timeout);
  }
}

static void handle(SoupServer *server, SoupServerMessage *msg, const char *path, GHashTable *query,
                   gpointer data) {
  (void)server;
  (void)query;
  FakeHub *hub = data;
  g_atomic_int_inc(&hub->requests);
  g_auto(GStrv) parts = g_strsplit(path + 1, "/", -1);
  guint n = g_strv_length(parts);
  if (n >= 4 && !strcmp(parts[0], "cdn"))
    serve_cdn(hub, msg, parts);
  else if (n >= 5 && !strcmp(parts[2], "resolve"))
    serve_resolve(hub, msg, parts);
  else
    soup_server_message_set_status(msg, SOUP_STATUS_NOT_FOUND, NULL);
}

static gpointer server_thread(gpointer data) {
  FakeHub *hub = data;
  g_main_context_push_thread_default(hub->context);
  hub->server = soup_server_new(NULL, NULL);
  soup_server_add_handler(hub->server, NULL, handle, hub, NULL);
  GError *error = NULL;
  if (!soup_server_listen_local(hub->server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &error))
    g_error("fake hub: %s", error->message);
  GSList *uris = soup_server_get_uris(hub->server);
  g_mutex_lock(&hub->lock);
  hub->endpoint = g_strdup_printf("http://127.0.0.1:%d", g_uri_get_port(uris->data));
  g_cond_signal(&hub->ready);
  g_mutex_unlock(&hub->lock);
  g_slist_free_full(uris, (GDestroyNotify)g_uri_unref);
  g_main_loop_run(hub->loop);
  soup_server_disconnect(hub->server);
  g_clear_object(&hub->server);
  while (g_main_context_iteration(hub->context, FALSE)) continue;
  g_main_context_pop_thread_default(hub->context);
  return NULL;
}

FakeHub *fake_hub_start(void) {
  FakeHub *hub = g_new0(FakeHub, 1);
  g_mutex_init(&hub->lock);
  g_cond_init(&hub->ready);
  hub->repos = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  hub->dropped = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  hub->context = g_main_context_new();
  hub->loop = g_main_loop_new(hub->context, FALSE);
  g_mutex_lock(&hub->lock);
  hub->thread = g_thread_new("fake-hub", server_thread, hub);
  while (!hub->endpoint) g_cond_wait(&hub->ready, &hub->lock);
  g_mutex_unlock(&hub->lock);
  return hub;
}

static gboolean quit_loop(gpointer loop) {
  g_main_loop_quit(loop);
  return G_SOURCE_REMOVE;
}

void fake_hub_stop(FakeHub *hub) {
  g_main_context_invoke(hub->context, quit_loop, hub->loop);
  g_thread_join(hub->thread);
  g_main_loop_unref(hub->loop);
  g_main_context_unref(hub->context);
  g_hash_table_unref(hub->repos);
  g_hash_table_unref(hub->dropped);
  g_mutex_clear(&hub->lock);
  g_cond_clear(&hub->ready);
  g_free(hub->endpoint);
  g_free(hub);
}

void fake_hub_add_repo(FakeHub *hub, const char *repo, const char *dir) {
  g_mutex_lock(&hub->lock);
  g_hash_table_replace(hub->repos, g_strdup(repo), g_strdup(dir));
  g_mutex_unlock(&hub->lock);
}

void fake_hub_set_mode(FakeHub *hub, FakeHubMode mode) {
  g_mutex_lock(&hub->lock);
  hub->mode = mode;
  g_hash_table_remove_all(hub->dropped);
  g_mutex_unlock(&hub->lock);
}

const char *fake_hub_endpoint(FakeHub *hub) {
  return hub->endpoint;
}

int fake_hub_requests(FakeHub *hub) {
  return g_atomic_int_get(&hub->requests);
}

int fake_hub_range_requests(FakeHub *hub) {
  return g_atomic_int_get(&hub->range_requests);
}
