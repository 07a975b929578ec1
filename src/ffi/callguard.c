/*
 * Calls the host's callbacks for the library (src/ffi/callguard.rs says why).
 *
 * A forced unwind leaving a callback (glibc's pthread_exit, pthread_cancel: CPython ends a
 * foreign thread this way when it asks for the GIL while the interpreter finalizes) must not
 * reach the library's Rust frames: Rust aborts the process there ("FATAL: exception not
 * rethrown"), and unwinding Rust frames that own values is undefined behaviour. Each call below
 * has a cleanup that runs only when the callee unwinds instead of returning: it parks the thread
 * for good, so the unwind never goes further. (CPython 3.14 does the same to threads that ask
 * for the GIL during finalization: it hangs them instead of ending them.) An ordinary C++
 * exception never gets here: its search phase finds no handler in the library's frames and the
 * C++ runtime terminates, as before. Where unwinding does not implement pthread_exit (musl,
 * Apple) the cleanup never runs, and pthread_exit ends the thread without touching Rust frames.
 */
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(_WIN32)
#include <unistd.h>

#define HIDDEN __attribute__((visibility("hidden")))

/* Set once a thread has been parked: its runtime is stuck in that callback for good. */
HIDDEN int hbws__callguard_parked;

static void hbws__park_if_unwinding(const int *returned) {
    if (!*returned) {
        __atomic_store_n(&hbws__callguard_parked, 1, __ATOMIC_SEQ_CST);
        for (;;) {
            pause();
        }
    }
}
#define GUARD int returned __attribute__((cleanup(hbws__park_if_unwinding))) = 0
#define RETURNED (returned = 1)
#else
#define HIDDEN
int hbws__callguard_parked;
#define GUARD
#define RETURNED ((void)0)
#endif

/* hb_state_cb, hb_heartbeat_cb: (user_data, const event *). */
HIDDEN void hbws__call_state(void (*f)(void *, const void *), void *ud, const void *ev) {
    GUARD;
    f(ud, ev);
    RETURNED;
}

HIDDEN void hbws__call_heartbeat(void (*f)(void *, const void *), void *ud, const void *ev) {
    GUARD;
    f(ud, ev);
    RETURNED;
}

HIDDEN void hbws__call_message(void (*f)(void *, int32_t, const uint8_t *, size_t), void *ud,
                               int32_t kind, const uint8_t *data, size_t len) {
    GUARD;
    f(ud, kind, data, len);
    RETURNED;
}

/* hb_dropped_cb, hb_delivery_cb: (user_data, uint64_t, uint64_t, int32_t). */
HIDDEN void hbws__call_u64_u64_i32(void (*f)(void *, uint64_t, uint64_t, int32_t), void *ud,
                                   uint64_t a, uint64_t b, int32_t c) {
    GUARD;
    f(ud, a, b, c);
    RETURNED;
}

HIDDEN void hbws__call_log(void (*f)(void *, int32_t, const char *, size_t), void *ud,
                           int32_t level, const char *msg, size_t len) {
    GUARD;
    f(ud, level, msg, len);
    RETURNED;
}

HIDDEN void hbws__call_release(void (*f)(void *), void *ud) {
    GUARD;
    f(ud);
    RETURNED;
}
