/* A fake Hugging Face Hub on 127.0.0.1 for the download tests: a SoupServer
 * on its own thread serving local folders as Hub repositories the way the
 * Hub does (HEAD/GET on /ORG/NAME/resolve/REV/PATH; .safetensors files as LFS
 * files: a 302 to /cdn/... with X-Linked-Size and X-Linked-Etag; others
 * directly with their git blob sha1 as ETag; Range requests on the CDN), with
 * fault modes. */
#pragma once

#include <glib.h>

typedef enum {
  FAKE_HUB_NORMAL,
  FAKE_HUB_DROP_ONCE,      /* the first CDN GET of each file closes the connection halfway */
  FAKE_HUB_WRONG_CHECKSUM, /* X-Linked-Etag states another sha256 */
  FAKE_HUB_NOT_FOUND,      /* every resolve answers 404 */
  FAKE_HUB_SERVER_ERROR,   /* every CDN GET answers 500 */
  FAKE_HUB_STALL,          /* CDN GETs send 64 kB, then nothing */
} FakeHubMode;

typedef struct FakeHub FakeHub;

FakeHub *fake_hub_start(void);
void fake_hub_stop(FakeHub *hub);
/* Serves folder `dir` as repository `repo` ("ORG/NAME") at any revision. */
void fake_hub_add_repo(FakeHub *hub, const char *repo, const char *dir);
void fake_hub_set_mode(FakeHub *hub, FakeHubMode mode);
/* "http://127.0.0.1:PORT", for HF_ENDPOINT. */
const char *fake_hub_endpoint(FakeHub *hub);
/* Requests seen so far: all of them, and GETs carrying a Range header. */
int fake_hub_requests(FakeHub *hub);
int fake_hub_range_requests(FakeHub *hub);
/* The sha256 of a file, lowercase hex; g_free it. */
char *fake_hub_sha256_of(const char *path);
