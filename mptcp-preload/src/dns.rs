//! Remote DNS (`MPTCP_PRELOAD_DNS=remote`, like proxychains' `proxy_dns`):
//! `getaddrinfo` answers a host name with a placeholder IPv4 address from
//! 240.0.0.0/8 (reserved, never routed, and not multicast, which some
//! programs reject); `connect()` to a placeholder sends the name to the
//! relay, which resolves it. No DNS query leaves the machine.
//!
//! Names live in a table of atomic words (no lock, no `malloc`; mapped by
//! the first name, so programs that never use it do not pay its 1 MiB);
//! when it is full the oldest entry is reused.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::pool::{Chunked, Zeroed};

/// Names remembered at once.
const SLOTS: usize = 4096;
/// Words per slot: a length byte and up to 255 name bytes.
const WORDS: usize = 32;
/// The placeholder block, 240.0.0.0/8.
const NET: u32 = 240 << 24;
const NET_MASK: u32 = 0xff00_0000;

/// One remembered name: its length byte, then its bytes.
struct Slot([AtomicU64; WORDS]);

// SAFETY: only atomics; all-zero is an empty slot.
unsafe impl Zeroed for Slot {}

static NEXT: AtomicU32 = AtomicU32::new(0);
/// `SLOTS` slots, in chunks of 32 KiB.
static NAMES: Chunked<Slot, 128> = Chunked::new();

fn load(slot: &Slot) -> [u8; WORDS * 8] {
    let mut bytes = [0u8; WORDS * 8];
    for (word, out) in slot.0.iter().zip(bytes.chunks_mut(8)) {
        out.copy_from_slice(&word.load(Ordering::Acquire).to_ne_bytes());
    }
    bytes
}

/// The placeholder address for `name` (1 to 255 bytes), the same one each
/// time while the name stays in the table.
pub fn placeholder(name: &[u8]) -> Option<Ipv4Addr> {
    if name.is_empty() || name.len() > 255 {
        return None;
    }
    let used = (NEXT.load(Ordering::Acquire) as usize).min(SLOTS);
    for (index, slot) in (0..used).filter_map(|i| Some((i, NAMES.get(i)?))) {
        let bytes = load(slot);
        if usize::from(bytes[0]) == name.len() && &bytes[1..=name.len()] == name {
            return Some(address(index));
        }
    }
    let index = NEXT.fetch_add(1, Ordering::AcqRel) as usize % SLOTS;
    let mut bytes = [0u8; WORDS * 8];
    bytes[0] = name.len() as u8;
    bytes[1..=name.len()].copy_from_slice(name);
    for (word, chunk) in NAMES.get_or_map(index)?.0.iter().zip(bytes.chunks(8)) {
        word.store(
            u64::from_ne_bytes(chunk.try_into().unwrap_or_default()),
            Ordering::Release,
        );
    }
    Some(address(index))
}

fn address(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(NET + 1 + index as u32)
}

/// Whether `addr` is in the placeholder block.
pub fn is_placeholder(addr: Ipv4Addr) -> bool {
    u32::from(addr) & NET_MASK == NET
}

/// The name behind a placeholder address.
pub fn name_of(addr: Ipv4Addr) -> Option<String> {
    let index = (u32::from(addr).checked_sub(NET + 1)?) as usize;
    if index >= SLOTS {
        return None;
    }
    let slot = NAMES.get(index)?;
    let bytes = load(slot);
    let len = usize::from(bytes[0]);
    if len == 0 {
        return None;
    }
    String::from_utf8(bytes[1..=len].to_vec()).ok()
}

/// Whether `getaddrinfo` should answer `name` with a placeholder: not an
/// address literal and not a local name.
pub fn is_remote_name(name: &str) -> bool {
    !name.is_empty()
        && name.parse::<std::net::IpAddr>().is_err()
        && name != "localhost"
        && !name.ends_with(".localhost")
        && !name.ends_with(".local")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_stable_placeholders() {
        let a = placeholder(b"www.example.test").unwrap();
        let b = placeholder(b"other.example.test").unwrap();
        assert_ne!(a, b);
        assert_eq!(placeholder(b"www.example.test"), Some(a));
        assert!(is_placeholder(a) && !is_placeholder(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(name_of(a).as_deref(), Some("www.example.test"));
        assert_eq!(name_of(Ipv4Addr::new(240, 255, 255, 255)), None);
        assert_eq!(placeholder(&[b'x'; 256]), None);
    }

    #[test]
    fn literals_and_local_names_resolve_locally() {
        assert!(is_remote_name("example.test"));
        for local in ["198.18.0.2", "::1", "localhost", "printer.local", ""] {
            assert!(!is_remote_name(local), "{local}");
        }
    }
}
