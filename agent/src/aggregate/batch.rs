//! Reading a whole kernel hash map in a few system calls.
//!
//! aya iterates a hash map with two `bpf(2)` calls per entry (next key, then
//! lookup): 5,000 calls for 2,500 processes, a third of a scrape's time
//! (docs/benchmarks.md#3-the-agents-own-footprint). `BPF_MAP_LOOKUP_BATCH`
//! (Linux 5.6+) copies up to [`CHUNK`] entries per call; where the kernel
//! lacks it, [`entries`] falls back to aya's iteration.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{HashMap, MapData, MapError};

/// `BPF_MAP_LOOKUP_BATCH` of `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

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

/// Every entry of `map` (an entry updated meanwhile may show either value,
/// as with iteration).
pub fn entries<K, V>(map: &HashMap<MapData, K, V>) -> Result<Vec<(K, V)>, MapError>
where
    K: aya::Pod + Default,
    V: aya::Pod + Default,
{
    match lookup_batch(map) {
        Ok(entries) => Ok(entries),
        Err(err) => {
            tracing::debug!(error = %err, "BPF_MAP_LOOKUP_BATCH failed; iterating the map instead");
            map.iter().collect()
        }
    }
}

fn lookup_batch<K, V>(map: &HashMap<MapData, K, V>) -> io::Result<Vec<(K, V)>>
where
    K: aya::Pod + Default,
    V: aya::Pod + Default,
{
    use aya::maps::IterableMap as _;
    let fd = map.map().fd().as_fd().as_raw_fd();
    let map_fd = u32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut entries = Vec::new();
    let mut chunk = CHUNK;
    // The kernel's position token (a bucket index for hash maps).
    let (mut token, mut next_token) = (0u64, 0u64);
    let mut first = true;
    loop {
        // aya checked at load time that the map's key and value sizes are
        // those of K and V, so the kernel writes `count` of each, packed.
        let mut keys = vec![K::default(); chunk as usize];
        let mut values = vec![V::default(); chunk as usize];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { std::ptr::from_mut(&mut token) as u64 },
            out_batch: std::ptr::from_mut(&mut next_token) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
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
                entries.extend(keys.into_iter().zip(values).take(copied));
                if error.is_some() {
                    return Ok(entries);
                }
            }
            _ => return Err(error.unwrap_or_else(|| io::Error::from(io::ErrorKind::Other))),
        }
        token = next_token;
        first = false;
    }
}
