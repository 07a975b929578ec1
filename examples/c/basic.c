/*
 * hbws C quick start: connect, print events, send a message, wait for its echo, close.
 *
 *   cc -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude examples/c/basic.c \
 *      -Ltarget/release -lhbws -Wl,-rpath,$PWD/target/release -o basic
 *   ./basic ws://127.0.0.1:9001/
 *
 * Exit status: 0 when the echo came back, the server confirmed our message and the close was
 * clean; 1 otherwise.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "hbws.h"

struct app {
    atomic_int open;      /* OPEN seen */
    atomic_int echoed;    /* our message came back */
    atomic_int closed;    /* CLOSED seen */
    atomic_int released;  /* release ran */
    atomic_int confirmed; /* messages the server confirmed reading */
};

static void on_state(void *user_data, const hb_state_event *ev) {
    struct app *app = user_data;
    printf("state %s (%s) attempt=%u delay=%llums close=%u http=%u: %s\n", hb_state_str(ev->state),
           hb_reason_str(ev->reason), ev->attempt, (unsigned long long)ev->delay_ms,
           (unsigned)ev->close_code, (unsigned)ev->http_status, ev->detail);
    if (ev->state == HB_STATE_OPEN) atomic_store(&app->open, 1);
    if (ev->state == HB_STATE_CLOSED) atomic_store(&app->closed, 1);
}

static void on_message(void *user_data, int32_t kind, const uint8_t *data, size_t len) {
    struct app *app = user_data;
    printf("message (%s, %zu bytes): %.*s\n", kind == HB_MESSAGE_TEXT ? "text" : "binary", len,
           (int)len, (const char *)data);
    if (len == 12 && memcmp(data, "hello from C", 12) == 0) atomic_store(&app->echoed, 1);
}

static void on_heartbeat(void *user_data, const hb_heartbeat_event *ev) {
    (void)user_data;
    if (ev->kind == HB_HEARTBEAT_PONG)
        printf("heartbeat pong rtt=%lluus\n", (unsigned long long)ev->rtt_us);
    else if (ev->kind == HB_HEARTBEAT_MISSED)
        printf("heartbeat missed %u\n", ev->missed);
    else
        printf("answered server ping\n");
}

static void on_dropped(void *user_data, uint64_t count, uint64_t bytes, int32_t reason) {
    (void)user_data;
    printf("dropped %llu messages (%llu bytes): %s\n", (unsigned long long)count,
           (unsigned long long)bytes, hb_reason_str(reason));
}

static void on_delivery(void *user_data, uint64_t first_id, uint64_t count, int32_t outcome) {
    struct app *app = user_data;
    const char *what = outcome == HB_DELIVERY_CONFIRMED     ? "confirmed"
                       : outcome == HB_DELIVERY_UNCONFIRMED ? "unconfirmed (may be lost)"
                                                            : "dropped";
    printf("delivery: messages %llu..%llu %s\n", (unsigned long long)first_id,
           (unsigned long long)(first_id + count - 1), what);
    if (outcome == HB_DELIVERY_CONFIRMED) atomic_fetch_add(&app->confirmed, (int)count);
}

static void on_log(void *user_data, int32_t level, const char *message, size_t len) {
    (void)user_data;
    (void)len;
    printf("log[%d] %s\n", (int)level, message);
}

static void release(void *user_data) {
    struct app *app = user_data;
    atomic_store(&app->released, 1);
}

/* Waits up to 10 s for *flag. */
static int wait_flag(atomic_int *flag) {
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 1000; i++) {
        if (atomic_load(flag)) return 1;
        nanosleep(&tick, NULL);
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *url = argc > 1 ? argv[1] : "ws://127.0.0.1:9001/";
    struct app app;
    atomic_init(&app.open, 0);
    atomic_init(&app.echoed, 0);
    atomic_init(&app.closed, 0);
    atomic_init(&app.released, 0);
    atomic_init(&app.confirmed, 0);
    printf("hbws %s (header %s)\n", hb_version(), HB_VERSION);

    hb_config *config = NULL;
    hb_status st = hb_config_new(&config);
    if (st != HB_OK) return 1;
    hb_config_set_ping_interval_ms(config, 200);
    hb_config_set_pong_timeout_ms(config, 100);
    hb_config_set_max_missed(config, 3);

    hb_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.size = sizeof cb;
    cb.on_state = on_state;
    cb.on_message = on_message;
    cb.on_heartbeat = on_heartbeat;
    cb.on_dropped = on_dropped;
    cb.on_log = on_log;
    cb.release = release;
    cb.on_delivery = on_delivery;

    char err[256];
    hb_client *client = NULL;
    st = hb_connect(url, config, &cb, &app, &client, err, sizeof err);
    hb_config_free(config); /* the client keeps its own copy */
    if (st != HB_OK) {
        fprintf(stderr, "hb_connect: %s: %s\n", hb_status_str(st), err);
        return 1;
    }

    /* Errors are statuses, never crashes. */
    if (hb_send_text(client, NULL, 3, NULL) != HB_ERR_NULL) return 1;
    if (hb_send_text(client, "\xff", 1, NULL) != HB_ERR_INVALID_UTF8) return 1;

    if (!wait_flag(&app.open)) {
        fprintf(stderr, "never opened\n");
        return 1;
    }
    const char *msg = "hello from C";
    st = hb_send_text(client, msg, strlen(msg), NULL);
    if (st != HB_OK) {
        fprintf(stderr, "hb_send_text: %s\n", hb_status_str(st));
        return 1;
    }
    int echoed = wait_flag(&app.echoed);

    hb_stats stats;
    memset(&stats, 0, sizeof stats);
    stats.size = sizeof stats;
    if (hb_get_stats(client, &stats) == HB_OK)
        printf("stats: state=%s sent=%llu received=%llu pongs=%llu rtt_last=%lluus\n",
               hb_state_str(stats.state), (unsigned long long)stats.messages_sent,
               (unsigned long long)stats.messages_received, (unsigned long long)stats.pongs_received,
               (unsigned long long)stats.rtt_last_us);

    st = hb_close(client); /* blocks until the close handshake is done and release ran */
    if (st != HB_OK) return 1;
    if (hb_close(client) != HB_ERR_INVALID_HANDLE) return 1; /* double close is an error */
    printf("closed=%d released=%d echoed=%d confirmed=%d\n", atomic_load(&app.closed),
           atomic_load(&app.released), echoed, atomic_load(&app.confirmed));
    /* Message 1 was confirmed by a heartbeat pong, or at the latest by the pong of the ping
     * hb_close sends before its Close. */
    return (echoed && atomic_load(&app.confirmed) == 1 && atomic_load(&app.closed) &&
            atomic_load(&app.released))
               ? 0
               : 1;
}
