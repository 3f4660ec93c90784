//! Raw `bpf(2)` map commands aya 0.14 does not offer.
//!
//! - Reading a whole hash map in a few system calls: aya iterates with two
//!   calls per entry (next key, then lookup): 5,000 calls for 2,500
//!   processes, a third of a scrape's time
//!   (docs/benchmarks.md#4-the-agents-own-footprint). `BPF_MAP_LOOKUP_BATCH`
//!   (Linux 5.6+) copies up to [`CHUNK`] entries per call; where the kernel
//!   lacks it, [`entries`] falls back to aya's iteration.
//! - Taking an entry out: `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (hash maps since
//!   Linux 5.14) returns the value the entry had when it was removed, so an
//!   event counted up to that instant is in the value and one counted after
//!   it starts a new entry; nothing falls between a read and a delete.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{HashMap, MapData, MapError};

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` and `BPF_MAP_LOOKUP_BATCH` of `enum
/// bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's `ENOTSUPP` (not in libc): a command the map type lacks.
const ENOTSUPP: i32 = 524;

/// Entries asked for per call; grown when a hash bucket holds more.
const CHUNK: u32 = 1024;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `elem` member of `union bpf_attr` (lookup, update, delete).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The buffers the kernel copies a batch into, kept from one harvest to the
/// next: a scrape then allocates (and page-faults in) nothing.
pub struct Scratch<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K: Default + Clone, V: Default + Clone> Default for Scratch<K, V> {
    fn default() -> Self {
        Self { keys: Vec::new(), values: Vec::new() }
    }
}

/// Replace `entries` with every entry of `map` (an entry updated meanwhile
/// may show either value, as with iteration). The allocations of `entries`
/// and `scratch` are reused from one harvest to the next.
pub fn entries<K, V>(
    map: &HashMap<MapData, K, V>,
    scratch: &mut Scratch<K, V>,
    entries: &mut Vec<(K, V)>,
) -> Result<(), MapError>
where
    K: aya::Pod + Default,
    V: aya::Pod + Default,
{
    entries.clear();
    match lookup_batch(map, scratch, entries) {
        Ok(()) => Ok(()),
        Err(err) => {
            tracing::debug!(error = %err, "BPF_MAP_LOOKUP_BATCH failed; iterating the map instead");
            entries.clear();
            for entry in map.iter() {
                entries.push(entry?);
            }
            Ok(())
        }
    }
}

/// How [`take`] removes entries on this kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TakeMethod {
    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`: atomic.
    #[default]
    LookupAndDelete,
    /// A lookup, then a delete (kernels before 5.14): an event counted
    /// between the two is lost from the per-process and per-cgroup sums
    /// (the node total keeps it).
    LookupThenDelete,
}

/// Remove `key` from `map` and return the value it had; `None` if there was
/// no such entry. `method` is downgraded, once, on kernels without the
/// atomic command.
pub fn take<K, V>(map: &mut HashMap<MapData, K, V>, key: &K, method: &mut TakeMethod) -> Result<Option<V>, MapError>
where
    K: aya::Pod,
    V: aya::Pod + Default,
{
    if *method == TakeMethod::LookupAndDelete {
        match lookup_and_delete(map, key) {
            Ok(value) => return Ok(value),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EINVAL | ENOTSUPP)) => {
                tracing::warn!(
                    error = %err,
                    "this kernel cannot take hash map entries atomically (BPF_MAP_LOOKUP_AND_DELETE_ELEM needs Linux 5.14): exited processes are read, then removed; an event counted in between is lost from the per-process sums"
                );
                *method = TakeMethod::LookupThenDelete;
            }
            Err(err) => {
                return Err(MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_and_delete_elem",
                    io_error: err,
                }))
            }
        }
    }
    let value = match map.get(key, 0) {
        Ok(value) => value,
        Err(MapError::KeyNotFound) => return Ok(None),
        Err(err) => return Err(err),
    };
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(Some(value)),
        Err(err) => Err(err),
    }
}

fn lookup_and_delete<K, V>(map: &HashMap<MapData, K, V>, key: &K) -> io::Result<Option<V>>
where
    K: aya::Pod,
    V: aya::Pod + Default,
{
    let map_fd = raw_fd(map)?;
    let mut value = V::default();
    let mut attr = ElemAttr {
        map_fd,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        ..ElemAttr::default()
    };
    // SAFETY: `attr` points at a key and a value buffer of the map's sizes
    // (aya checked them against K and V when the map was taken), alive for
    // the call; the kernel writes one value.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_mut(&mut attr),
            size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if ret == 0 {
        return Ok(Some(value));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(err),
    }
}

fn raw_fd<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> io::Result<u32> {
    use aya::maps::IterableMap as _;
    let fd = map.map().fd().as_fd().as_raw_fd();
    u32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn lookup_batch<K, V>(
    map: &HashMap<MapData, K, V>,
    scratch: &mut Scratch<K, V>,
    entries: &mut Vec<(K, V)>,
) -> io::Result<()>
where
    K: aya::Pod + Default,
    V: aya::Pod + Default,
{
    let map_fd = raw_fd(map)?;
    let mut chunk = CHUNK;
    // The kernel's position token (a bucket index for hash maps).
    let (mut token, mut next_token) = (0u64, 0u64);
    let mut first = true;
    loop {
        // aya checked at load time that the map's key and value sizes are
        // those of K and V, so the kernel writes `count` of each, packed.
        scratch.keys.resize(chunk as usize, K::default());
        scratch.values.resize(chunk as usize, V::default());
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { std::ptr::from_mut(&mut token) as u64 },
            out_batch: std::ptr::from_mut(&mut next_token) as u64,
            keys: scratch.keys.as_mut_ptr() as u64,
            values: scratch.values.as_mut_ptr() as u64,
            count: chunk,
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `chunk` keys and values and at
        // two u64 tokens, all alive for the call; the kernel writes no more
        // than `count` elements of the map's key and value sizes.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        let copied = (attr.count as usize).min(chunk as usize);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more entries than fit: ask again with more room.
            Some(libc::ENOSPC) if copied == 0 => {
                chunk = chunk.saturating_mul(2);
                continue;
            }
            // ENOENT: the end of the map, with the last entries copied.
            None | Some(libc::ENOENT) => {
                entries.extend(scratch.keys.iter().copied().zip(scratch.values.iter().copied()).take(copied));
                if error.is_some() {
                    return Ok(());
                }
            }
            _ => return Err(error.unwrap_or_else(|| io::Error::from(io::ErrorKind::Other))),
        }
        token = next_token;
        first = false;
    }
}
