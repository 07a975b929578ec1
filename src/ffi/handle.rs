//! Client handles. C holds an opaque `hb_client *` that is never dereferenced: its value is an
//! id looked up in a table on every call, so a handle that was closed, that never existed, or
//! that belongs to the process this one was `fork()`ed from is refused with a status.
//!
//! # What a handle value looks like
//!
//! Bindings store handles where a garbage collector may look at them (a Go struct field of type
//! `*C.hb_client` is scanned as a pointer; Go aborts with "found bad pointer in Go heap" when such
//! a value falls inside its heap arena but not on a live object). So a handle value must never be
//! an address any allocator can hand out, and must never repeat:
//!
//! - **64-bit**: `0x8080_0000_0000_0000 | id << 1 | 1`, with `id` a counter that starts at 1 and
//!   is never reused (it would take 2^54 handles, 570 years at a million `hb_connect`s a second,
//!   to run out; after that `hb_connect` is refused). Bit 63 set with bit 62 clear is
//!   non-canonical on x86_64 with 4- and 5-level paging (canonical addresses have bits 63..47,
//!   or 63..56, all equal), so no mapping can exist there. On aarch64 bit 55 selects the kernel's
//!   translation table (TTBR1) whatever the top byte holds, so the value is no user address even
//!   with Top-Byte-Ignore, where Android tags heap pointers in bits 56..63 (0xb4.., or an MTE tag
//!   in bits 56..59). Go's arena index of such a value is out of its table's range (amd64 offsets
//!   addresses by `0xffff800000000000`, arm64 by 0, heap addresses have 48 bits), so its GC and
//!   cgo checks treat it as a non-Go pointer and ignore it. The value is also odd, so it is never
//!   the start of an aligned allocation, and far above the first page (Go throws on a "pointer"
//!   below 4096 when it copies a stack).
//! - **32-bit**: no 32-bit value is outside every user address space: a 32-bit process on a 64-bit
//!   kernel (armeabi-v7a apps on arm64 phones, i686 on x86_64) may map nearly all 4 GiB. The value
//!   is `0xC000_0000 | id << 1 | 1`: in the kernel's part of a native 32-bit kernel's default
//!   3G/1G split, and odd. On a 64-bit kernel it may still fall inside a Go heap arena; Go treats
//!   any value inside an object as a pointer to that object (keeps it alive: a leak, not a
//!   crash) and aborts on one that points at a free span. So on 32-bit targets bindings must hold
//!   handles in an integer type (`uintptr` in Go), which the header says. `id` counts from 1 up
//!   to 2^29 - 1, then wraps, skipping ids still live: a handle can only ever name another client
//!   after 536,870,911 later `hb_connect`s (first-in-first-out, the largest space 32 bits allow
//!   here; at one connect a second, 17 years).
//!
//! Lookups take one mutex and one hash lookup: O(1), a few tens of nanoseconds.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

use super::hb_status::{self, *};
use crate::client::Client;
use crate::runtime;

/// The fixed bits of every handle value (see the module docs).
pub(crate) const TAG: usize = if usize::BITS >= 64 {
    0x8080_0000_0000_0000u64 as usize
} else {
    0xC000_0000
};
/// How many bits the id has.
const ID_BITS: u32 = if usize::BITS >= 64 { 54 } else { 29 };
/// Ids run from 1 to this.
const MAX_ID: u64 = (1u64 << ID_BITS) - 1;

fn encode(id: u64) -> usize {
    TAG | ((id as usize) << 1) | 1
}

fn decode(value: usize) -> Option<u64> {
    if value & TAG != TAG || value & 1 == 0 {
        return None;
    }
    let id = ((value & !TAG) >> 1) as u64;
    (1..=MAX_ID).contains(&id).then_some(id)
}

/// Hashes an id with one multiplication (Fibonacci hashing). The ids are ours, sequential and
/// not chosen by an adversary, so SipHash's flooding resistance buys nothing on a path every
/// `hb_send_*` takes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

struct Entry<T> {
    value: T,
    /// The fork generation the entry was made in ([`runtime::fork_generation`]).
    generation: u64,
}

/// Live ids and what they name. Generic so the unit tests can exercise the id space without
/// clients.
struct Table<T> {
    live: IdMap<Entry<T>>,
    /// The last id handed out.
    last: u64,
    /// The largest id (small in tests, to exercise the wrap).
    max: u64,
}

impl<T> Table<T> {
    fn new(max: u64) -> Self {
        Table {
            live: IdMap::default(),
            last: 0,
            max,
        }
    }
}

/// The table, made on first use (`HashMap::new` is not `const`).
struct Registry {
    table: Option<Table<Client>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { table: None });

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    fn table(&mut self) -> &mut Table<Client> {
        self.table.get_or_insert_with(|| Table::new(MAX_ID))
    }
}

impl<T: Clone> Table<T> {
    /// A fresh id: the next one after the last, skipping live ids; None if all are live.
    fn insert(&mut self, value: T, generation: u64) -> Option<u64> {
        for _ in 0..=self.live.len() {
            self.last = if self.last >= self.max {
                1
            } else {
                self.last + 1
            };
            if !self.live.contains_key(&self.last) {
                self.live.insert(self.last, Entry { value, generation });
                return Some(self.last);
            }
        }
        None
    }

    fn get(&self, id: u64, generation: u64) -> Result<T, hb_status> {
        match self.live.get(&id) {
            Some(e) if e.generation == generation => Ok(e.value.clone()),
            Some(_) => Err(HB_ERR_FORKED),
            None => Err(HB_ERR_INVALID_HANDLE),
        }
    }

    fn remove(&mut self, id: u64, generation: u64) -> Result<T, hb_status> {
        match self.live.get(&id) {
            // A parent's client stays in the table, untouched: the child must not drop it.
            Some(e) if e.generation != generation => Err(HB_ERR_FORKED),
            Some(_) => Ok(self.live.remove(&id).map(|e| e.value).expect("present")),
            None => Err(HB_ERR_INVALID_HANDLE),
        }
    }

    fn drain(&mut self, generation: u64) -> Vec<T> {
        let ids: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, e)| e.generation == generation)
            .map(|(id, _)| *id)
            .collect();
        ids.iter()
            .filter_map(|id| self.live.remove(id))
            .map(|e| e.value)
            .collect()
    }
}

/// Registers a client and returns its handle value.
pub(crate) fn insert(client: Client) -> Result<usize, hb_status> {
    register_atfork();
    let generation = runtime::fork_generation();
    registry()
        .table()
        .insert(client, generation)
        .map(encode)
        .ok_or(HB_ERR_INVALID_ARGUMENT)
}

/// The live client behind a handle.
pub(crate) fn get(value: usize) -> Result<Client, hb_status> {
    if value == 0 {
        return Err(HB_ERR_NULL);
    }
    let id = decode(value).ok_or(HB_ERR_INVALID_HANDLE)?;
    let generation = runtime::fork_generation();
    registry().table().get(id, generation)
}

/// Unregisters a client: its handle (and every copy of it) is dead from now on.
pub(crate) fn remove(value: usize) -> Result<Client, hb_status> {
    if value == 0 {
        return Err(HB_ERR_NULL);
    }
    let id = decode(value).ok_or(HB_ERR_INVALID_HANDLE)?;
    let generation = runtime::fork_generation();
    registry().table().remove(id, generation)
}

/// Unregisters every client of this process (not those inherited from a `fork()` parent) and
/// returns them: their handles are dead from now on.
pub(crate) fn remove_all() -> Vec<Client> {
    let generation = runtime::fork_generation();
    registry().table().drain(generation)
}

thread_local! {
    /// The registry lock [`fork_prepare`] took, released after the fork on the same thread.
    static FORK_GUARD: std::cell::Cell<Option<MutexGuard<'static, Registry>>> =
        const { std::cell::Cell::new(None) };
}

/// Holds the registry's lock across `fork()` (taken before, released in the parent and the
/// child), so a child never inherits it held by a thread it does not have.
extern "C" fn fork_prepare() {
    FORK_GUARD.with(|g| g.set(Some(registry())));
}

extern "C" fn fork_release() {
    FORK_GUARD.with(|g| drop(g.take()));
}

fn register_atfork() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers lock the registry on the forking thread before the fork and
        // unlock it after; registered after the runtime's, so they run inside its handlers
        // (prepare handlers run in reverse order) and the child's generation is bumped first.
        // If registration fails the child may inherit the lock held: no worse than before.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_release), Some(fork_release)) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Carries the fixed bits: outside every heap (64-bit), odd and tagged (32-bit).
    fn heap_safe(v: usize) -> bool {
        v & TAG == TAG && v & 1 == 1
    }

    #[test]
    fn encoding_round_trips_and_is_tagged() {
        for id in [1, 2, 77, MAX_ID] {
            let v = encode(id);
            assert!(heap_safe(v), "{v:#x}");
            assert_eq!(decode(v), Some(id));
        }
        let forged = ((77u64 << 32) | 1) as usize;
        for bad in [0, 1, 2, TAG, TAG | 1, encode(5) & !1, 0xdead_beef, forged] {
            assert_eq!(decode(bad), None, "{bad:#x}");
        }
        if usize::BITS == 64 {
            let v = encode(1) as u64;
            // Non-canonical on x86_64 (4- and 5-level paging): bit 63 set, bit 62 clear.
            assert_eq!(v >> 62, 0b10);
            // Kernel half on aarch64 whatever the top byte: bit 55 set.
            assert_eq!((v >> 55) & 1, 1);
            // The id never reaches the fixed bits.
            assert_eq!(encode(MAX_ID) as u64 >> 55, 0x101);
        }
    }

    #[test]
    fn a_million_cycles_never_repeat_a_value_or_leave_the_safe_range() {
        let mut t: Table<u32> = Table::new(MAX_ID);
        let mut seen = std::collections::HashSet::new();
        let stale = encode(t.insert(0, 0).unwrap());
        t.remove(decode(stale).unwrap(), 0).unwrap();
        seen.insert(stale);
        // A few long-lived clients alongside the churn.
        let kept: Vec<u64> = (0..8).map(|i| t.insert(i, 0).unwrap()).collect();
        for i in 0..1_000_000u32 {
            let id = t.insert(i, 0).unwrap();
            let v = encode(id);
            assert!(heap_safe(v), "{v:#x} could be a heap address");
            assert!(seen.insert(v), "value {v:#x} repeated after {i} cycles");
            assert_eq!(t.get(id, 0), Ok(i));
            assert_eq!(t.remove(id, 0), Ok(i));
        }
        assert_eq!(t.get(decode(stale).unwrap(), 0), Err(HB_ERR_INVALID_HANDLE));
        for (i, id) in kept.iter().enumerate() {
            assert_eq!(t.get(*id, 0), Ok(i as u32));
        }
    }

    #[test]
    fn wrapping_id_space_skips_live_ids_and_refuses_stale_ones() {
        // A tiny id space stands in for the 32-bit one: reuse is first-in-first-out, and an id
        // comes back only after every other id has been handed out.
        let mut t: Table<u32> = Table::new(16);
        let live = t.insert(100, 0).unwrap();
        let stale = t.insert(101, 0).unwrap();
        t.remove(stale, 0).unwrap();
        let mut last_seen = HashMap::new();
        for i in 0..10_000u32 {
            let id = t.insert(i, 0).unwrap();
            assert_ne!(id, live, "a live id was handed out again");
            if let Some(prev) = last_seen.insert(id, i) {
                assert_eq!(i - prev, 15, "id {id} reused before the others");
            }
            if id != stale {
                assert_eq!(t.get(stale, 0), Err(HB_ERR_INVALID_HANDLE));
            }
            t.remove(id, 0).unwrap();
        }
        assert_eq!(t.get(live, 0), Ok(100));
        // Full: no id left.
        let mut t: Table<u32> = Table::new(3);
        for i in 0..3 {
            t.insert(i, 0).unwrap();
        }
        assert_eq!(t.insert(9, 0), None);
    }

    #[test]
    fn another_fork_generation_is_forked_not_removed() {
        let mut t: Table<u32> = Table::new(MAX_ID);
        let parent = t.insert(1, 0).unwrap();
        assert_eq!(t.get(parent, 1), Err(HB_ERR_FORKED));
        assert_eq!(t.remove(parent, 1), Err(HB_ERR_FORKED));
        let child = t.insert(2, 1).unwrap();
        assert_eq!(t.drain(1), vec![2]);
        assert_eq!(t.get(child, 1), Err(HB_ERR_INVALID_HANDLE));
        assert_eq!(t.get(parent, 0), Ok(1), "the parent's entry is left alone");
    }
}
