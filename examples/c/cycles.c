/*
 * Leak check driver: N connect / wait OPEN / send / close cycles through the C API, for valgrind.
 *
 *   ./cycles ws://127.0.0.1:PORT/ 1000
 *
 * Exit status 0 when every cycle opened, closed cleanly and released its user_data.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hbws.h"

struct cycle {
    atomic_int open;
    atomic_int released;
};

static void on_state(void *user_data, const hb_state_event *ev) {
    struct cycle *c = user_data;
    if (ev->state == HB_STATE_OPEN) atomic_store(&c->open, 1);
}

static void release(void *user_data) {
    struct cycle *c = user_data;
    atomic_store(&c->released, 1);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: cycles URL N\n");
        return 2;
    }
    const char *url = argv[1];
    int n = atoi(argv[2]);
    hb_config *config = NULL;
    if (hb_config_new(&config) != HB_OK) return 1;
    hb_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.size = sizeof cb;
    cb.on_state = on_state;
    cb.release = release;
    struct timespec tick = {0, 1000 * 1000};
    for (int i = 0; i < n; i++) {
        struct cycle c;
        atomic_init(&c.open, 0);
        atomic_init(&c.released, 0);
        hb_client *client = NULL;
        char err[128];
        hb_status st = hb_connect(url, config, &cb, &c, &client, err, sizeof err);
        if (st != HB_OK) {
            fprintf(stderr, "cycle %d: hb_connect: %s: %s\n", i, hb_status_str(st), err);
            return 1;
        }
        for (int w = 0; w < 20000 && !atomic_load(&c.open); w++) nanosleep(&tick, NULL);
        if (!atomic_load(&c.open)) {
            fprintf(stderr, "cycle %d: never opened\n", i);
            return 1;
        }
        if (hb_send_text(client, "x", 1, NULL) != HB_OK) return 1;
        if (hb_close(client) != HB_OK || !atomic_load(&c.released)) {
            fprintf(stderr, "cycle %d: close failed\n", i);
            return 1;
        }
    }
    hb_config_free(config);
    printf("%d cycles ok\n", n);
    return 0;
}
