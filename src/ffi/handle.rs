//! Generation-checked client handles. C holds an opaque `hb_client *` whose value encodes a slot
//! index and a generation; it is never dereferenced. A handle whose slot was freed (closed), or
//! was reused by a later client, or that never existed, is refused.

use std::sync::Mutex;

use super::hb_status::{self, *};
use crate::client::Client;
use crate::runtime;

/// Bits of the handle value that hold the slot index (+1, so no handle is NULL).
const INDEX_BITS: u32 = if usize::BITS >= 64 { 32 } else { 20 };
const INDEX_MASK: usize = (1usize << INDEX_BITS) - 1;
const GEN_MASK: u32 = if usize::BITS >= 64 {
    u32::MAX
} else {
    (1u32 << (usize::BITS - INDEX_BITS)) - 1
};

struct Slot {
    gen: u32,
    client: Option<Client>,
}

struct Registry {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    slots: Vec::new(),
    free: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode(index: usize, gen: u32) -> usize {
    ((gen as usize) << INDEX_BITS) | (index + 1)
}

fn decode(value: usize) -> Option<(usize, u32)> {
    let index = (value & INDEX_MASK).checked_sub(1)?;
    let gen = (value >> INDEX_BITS) as u32;
    Some((index, gen))
}

/// Registers a client and returns its handle value.
pub(crate) fn insert(client: Client) -> Result<usize, hb_status> {
    let mut r = registry();
    let index = match r.free.pop() {
        Some(i) => i,
        None => {
            if r.slots.len() >= INDEX_MASK - 1 {
                return Err(HB_ERR_INVALID_ARGUMENT);
            }
            r.slots.push(Slot {
                gen: 1,
                client: None,
            });
            r.slots.len() - 1
        }
    };
    let slot = &mut r.slots[index];
    slot.client = Some(client);
    Ok(encode(index, slot.gen))
}

fn check_fork() -> Result<(), hb_status> {
    if runtime::forked() {
        Err(HB_ERR_FORKED)
    } else {
        Ok(())
    }
}

/// The live client behind a handle.
pub(crate) fn get(value: usize) -> Result<Client, hb_status> {
    if value == 0 {
        return Err(HB_ERR_NULL);
    }
    check_fork()?;
    let (index, gen) = decode(value).ok_or(HB_ERR_INVALID_HANDLE)?;
    let r = registry();
    match r.slots.get(index) {
        Some(Slot {
            gen: g,
            client: Some(c),
        }) if *g == gen => Ok(c.clone()),
        _ => Err(HB_ERR_INVALID_HANDLE),
    }
}

/// Unregisters a client: its handle (and every copy of it) is dead from now on.
pub(crate) fn remove(value: usize) -> Result<Client, hb_status> {
    if value == 0 {
        return Err(HB_ERR_NULL);
    }
    check_fork()?;
    let (index, gen) = decode(value).ok_or(HB_ERR_INVALID_HANDLE)?;
    let mut r = registry();
    let client = match r.slots.get_mut(index) {
        Some(slot) if slot.gen == gen && slot.client.is_some() => {
            slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
            if slot.gen == 0 {
                slot.gen = 1;
            }
            slot.client.take()
        }
        _ => None,
    };
    let client = client.ok_or(HB_ERR_INVALID_HANDLE)?;
    r.free.push(index);
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_is_never_null() {
        for (i, g) in [(0, 1), (5, 7), (INDEX_MASK - 2, GEN_MASK)] {
            let v = encode(i, g);
            assert_ne!(v, 0);
            assert_eq!(decode(v), Some((i, g)));
        }
        assert_eq!(decode(0), None);
        assert_eq!(
            decode(1usize << INDEX_BITS),
            None,
            "index part 0 is not a handle"
        );
    }
}
