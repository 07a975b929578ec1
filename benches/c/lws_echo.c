/* Minimal libwebsockets echo client for the per-message benchmark.
 *
 * lws_echo PORT K [--lat] [--host]
 *
 * Connects to ws://127.0.0.1:PORT/, sends a 32-byte text message, waits for its echo, and
 * repeats K times (the next send is requested with lws_callback_on_writable from the receive
 * callback: lws only allows writes from the WRITEABLE callback). rx buffer 1024 bytes (raw
 * tungstenite: 512; hbws reads up to 4096 per call through the stack). K = 0 connects and closes only (the callgrind baseline). --lat records
 * each round trip's wall time (0.1 µs resolution) and prints p50/p99 in microseconds. Prints one JSON line.
 * A round trip is timed from the moment the program asks to send (lws_callback_on_writable, lws's
 * way of sending) to the echo's receive callback, as the hbws and raw clients time it from their
 * send call; timing from the WRITEABLE callback would leave lws's own event-loop turn out. */
#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char MSG[] = "0123456789abcdef0123456789abcdef";
static long k, got;
static int lat, host;
static atomic_int done;
static struct lws *conn;
static struct lws_context *ctx;
/* --host: sends asked for by the main thread, and echoes received, under one mutex. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long asked, echoed;
static int opened;
static uint64_t sent_at;
static uint32_t *lats;
static unsigned char buf[LWS_PRE + 64];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        fprintf(stderr, "lws_echo: connection error: %s\n", in ? (const char *)in : "?");
        done = 2;
        break;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (host && conn) {
            pthread_mutex_lock(&mu);
            int want = asked > got;
            pthread_mutex_unlock(&mu);
            if (want)
                lws_callback_on_writable(conn);
        }
        break;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        conn = wsi;
        if (host) {
            pthread_mutex_lock(&mu);
            opened = 1;
            pthread_cond_signal(&cv);
            pthread_mutex_unlock(&mu);
        } else if (k > 0) {
            if (lat)
                sent_at = now_ns();
            lws_callback_on_writable(wsi);
        } else
            done = 1;
        break;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (got < k) {
            memcpy(buf + LWS_PRE, MSG, 32);
            if (lws_write(wsi, buf + LWS_PRE, 32, LWS_WRITE_TEXT) < 32) {
                done = 2;
                return -1;
            }
        }
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (!lws_is_final_fragment(wsi))
            break;
        if (lat)
            lats[got] = (uint32_t)((now_ns() - sent_at) / 100); /* 0.1 µs units */
        got++;
        if (host) {
            pthread_mutex_lock(&mu);
            echoed = got;
            pthread_cond_signal(&cv);
            pthread_mutex_unlock(&mu);
        } else if (got < k) {
            if (lat)
                sent_at = now_ns();
            lws_callback_on_writable(wsi);
        } else
            done = 1;
        break;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (!done)
            done = 3;
        if (host) {
            pthread_mutex_lock(&mu);
            pthread_cond_signal(&cv);
            pthread_mutex_unlock(&mu);
        }
        break;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
    {"bench", cb, 0, 1024, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static int cmp(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void *service(void *arg) {
    (void)arg;
    while (!done)
        if (lws_service(ctx, 0) < 0)
            break;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: lws_echo PORT K [--lat]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    k = atol(argv[2]);
    for (int i = 3; i < argc; i++) {
        lat |= strcmp(argv[i], "--lat") == 0;
        host |= strcmp(argv[i], "--host") == 0;
    }
    if (lat)
        lats = calloc((size_t)k + 1, sizeof *lats);
    lws_set_log_level(LLL_ERR, NULL);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.gid = -1;
    info.uid = -1;
    ctx = lws_create_context(&info);
    if (!ctx)
        return 1;

    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = ctx;
    ci.address = "127.0.0.1";
    ci.port = port;
    ci.path = "/";
    ci.host = "127.0.0.1";
    ci.origin = "127.0.0.1";
    ci.protocol = NULL; /* no Sec-WebSocket-Protocol: the server offers none */
    ci.local_protocol_name = "bench";
    if (!lws_client_connect_via_info(&ci)) {
        fprintf(stderr, "lws_echo: connect failed\n");
        return 1;
    }
    uint64_t t0 = now_ns();
    if (host) {
        pthread_t th;
        if (pthread_create(&th, NULL, service, NULL) != 0)
            return 1;
        pthread_mutex_lock(&mu);
        while (!opened && !done)
            pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
        for (long i = 1; i <= k && !done; i++) {
            pthread_mutex_lock(&mu);
            asked = i;
            if (lat)
                sent_at = now_ns();
            pthread_mutex_unlock(&mu);
            lws_cancel_service(ctx);
            pthread_mutex_lock(&mu);
            while (echoed < i && !done)
                pthread_cond_wait(&cv, &mu);
            pthread_mutex_unlock(&mu);
        }
        if (!done)
            done = 1;
        lws_cancel_service(ctx);
        pthread_join(th, NULL);
    } else {
        while (!done)
            if (lws_service(ctx, 0) < 0)
                break;
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    lws_context_destroy(ctx);
    uint32_t p50 = 0, p99 = 0;
    if (lat && got > 0) {
        qsort(lats, (size_t)got, sizeof *lats, cmp);
        p50 = lats[(size_t)((got - 1) * 0.5 + 0.5)];
        p99 = lats[(size_t)((got - 1) * 0.99 + 0.5)];
    }
    printf("{\"client\":\"lws\",\"k\":%ld,\"echoes\":%ld,\"p50_us\":%.1f,\"p99_us\":%.1f,\"secs\":%.3f}\n", k, got, p50 / 10.0, p99 / 10.0, secs);
    return done == 1 ? 0 : 1;
}
