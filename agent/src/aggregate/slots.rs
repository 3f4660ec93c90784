//! The DONTNEED slots: where the programs count the requests of busy
//! processes without a hash lookup (the protocol is at
//! `ptwatch_common::DONTNEED_SLOT_COUNT`). A slot's counts are part of its
//! owner's: they are added to the owner's `PROCESS_COUNTERS` entry whenever
//! entries are read, and taken with it once the process is gone.
//!
//! A claimed slot always has a hash entry to join: a process claims one only
//! after its own entry counted requests, and both leave together in
//! [`DontneedSlots::release`].

use aya::maps::MapError;
use ptwatch_common::{names, DontneedSlot, ProcessCounters, ProcessKey};

use super::batch::{self, Scratch};
use crate::probes::{ProbeError, ProbeMaps};

/// The requests and bytes a slot counted for its owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounts {
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
}

impl SlotCounts {
    fn of(slot: &DontneedSlot) -> Self {
        Self { dontneed_calls: slot.dontneed_calls, dontneed_bytes: slot.dontneed_bytes }
    }

    /// Add to a process' entry.
    pub fn add_to(&self, counters: &mut ProcessCounters) {
        counters.dontneed_calls = counters.dontneed_calls.wrapping_add(self.dontneed_calls);
        counters.dontneed_bytes = counters.dontneed_bytes.wrapping_add(self.dontneed_bytes);
    }
}

/// Reads the slots; its buffers are kept from one harvest to the next.
#[derive(Default)]
pub struct DontneedSlots {
    owners_scratch: Scratch<u32, ProcessKey>,
    owners: Vec<(u32, ProcessKey)>,
    /// Claimed slots by owner, sorted for the lookups of [`Self::fold`].
    claimed: Vec<(ProcessKey, SlotCounts)>,
}

fn slots_error(source: MapError) -> ProbeError {
    ProbeError::Map { name: names::DONTNEED_SLOTS, source }
}

fn owners_error(source: MapError) -> ProbeError {
    ProbeError::Map { name: names::DONTNEED_SLOT_OWNERS, source }
}

impl DontneedSlots {
    /// Add every claimed slot's counts to its owner's entry in `entries`
    /// (just read from `PROCESS_COUNTERS`). Owners are read before their
    /// slots: a slot claimed in between is left for the next read, and its
    /// counts only grow until then. One lookup per claimed slot: a few for
    /// the usual handful of busy processes, at most 4,096 (about 2 ms).
    pub fn fold(&mut self, maps: &ProbeMaps, entries: &mut [(ProcessKey, ProcessCounters)]) -> Result<(), ProbeError> {
        batch::entries(&maps.dontneed_slot_owners, &mut self.owners_scratch, &mut self.owners).map_err(owners_error)?;
        if self.owners.is_empty() {
            return Ok(());
        }
        self.claimed.clear();
        for (index, owner) in &self.owners {
            let slot = maps.dontneed_slots.get(index, 0).map_err(slots_error)?;
            self.claimed.push((*owner, SlotCounts::of(&slot)));
        }
        self.claimed.sort_unstable_by_key(|(owner, _)| *owner);
        for (key, counters) in entries.iter_mut() {
            if let Ok(at) = self.claimed.binary_search_by_key(key, |(owner, _)| *owner) {
                self.claimed[at].1.add_to(counters);
            }
        }
        Ok(())
    }

    /// Take the slot of `key`, a process that is gone (no thread of it can
    /// count there any more): its final counts, if it held one. The slot is
    /// zeroed before its index is released, so a later claimant starts from
    /// zero.
    pub fn release(maps: &mut ProbeMaps, key: &ProcessKey) -> Result<Option<SlotCounts>, ProbeError> {
        let index = DontneedSlot::index(key);
        match maps.dontneed_slot_owners.get(&index, 0) {
            Ok(owner) if owner == *key => {}
            Ok(_) | Err(MapError::KeyNotFound) => return Ok(None),
            Err(err) => return Err(owners_error(err)),
        }
        let slot = maps.dontneed_slots.get(&index, 0).map_err(slots_error)?;
        maps.dontneed_slots.set(index, DontneedSlot::default(), 0).map_err(slots_error)?;
        match maps.dontneed_slot_owners.remove(&index) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(err) => return Err(owners_error(err)),
        }
        Ok(Some(SlotCounts::of(&slot)))
    }
}
