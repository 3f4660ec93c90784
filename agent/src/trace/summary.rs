//! What `ptwatch trace` prints when it stops: the events it showed, counted
//! by event, cause and level, and per process, with the lost-event count.

use std::collections::BTreeMap;

use serde::Serialize;

use super::record::{human_bytes, Record};
use crate::probes::limitation::Limitation;

/// Events and pages of one `(event, cause, level)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub event: &'static str,
    pub cause: &'static str,
    pub level: &'static str,
    pub events: u64,
    pub pages: u64,
}

/// One process' share of the events shown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessTotals {
    pub pid: u32,
    pub comm: String,
    /// DONTNEED calls, the bytes they advised and the PTE pages they reclaimed.
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    pub reclaimed_pages: u64,
    /// Page-table pages freed (free events, any cause).
    pub freed_pages: u64,
}

/// What the probes of this run could see: without it a consumer cannot
/// tell "no free happened" from "frees are not observable here".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Visibility {
    /// The probe plan attached (`fentry`, `kprobe`, `tracepoint`).
    pub plan: &'static str,
    /// Whether page-table `free` events can appear at all.
    pub frees_observed: bool,
    /// Whether unmap, exit and other frees carry their table's level (else
    /// `unknown`; reclaim, collapse and THP frees are PTE tables anyway).
    pub free_levels_named: bool,
    /// The causes frees are told apart by.
    pub causes: Vec<&'static str>,
    /// What the plan cannot see on this kernel although it works.
    pub limitations: Vec<Limitation>,
}

impl Visibility {
    pub fn of(plan: &crate::probes::plan::PlanReport) -> Self {
        let chosen = &plan.chosen().check;
        Self {
            plan: plan.mode().as_str(),
            frees_observed: plan.frees_observed(),
            free_levels_named: chosen.names_free_levels(),
            causes: plan.cause_names(),
            limitations: chosen.limitations.clone(),
        }
    }
}

/// The summary, as printed (`"type":"summary"` in JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// What could be seen: events missing from the totals may be unseeable.
    pub visibility: Visibility,
    pub duration_seconds: f64,
    /// Events shown (after the filters).
    pub events: u64,
    /// Events the kernel could not put in the ring buffer.
    pub lost: u64,
    /// By event, cause and level, most pages first.
    pub totals: Vec<Totals>,
    /// By process, most page-table pages (reclaimed + freed) first.
    pub processes: Vec<ProcessTotals>,
}

/// Accumulates the events shown.
#[derive(Default)]
pub struct Tally {
    events: u64,
    by_kind: BTreeMap<(&'static str, &'static str, &'static str), (u64, u64)>,
    by_process: BTreeMap<u32, ProcessTotals>,
}

impl Tally {
    pub fn add(&mut self, record: &Record) {
        self.events += 1;
        let totals = self.by_kind.entry((record.event, record.cause, record.level)).or_default();
        totals.0 += 1;
        totals.1 += record.pages;
        let process = self.by_process.entry(record.pid).or_insert_with(|| ProcessTotals {
            pid: record.pid,
            comm: record.comm.clone(),
            ..ProcessTotals::default()
        });
        match record.bytes {
            // A DONTNEED call.
            Some(bytes) => {
                process.dontneed_calls += 1;
                process.dontneed_bytes += bytes;
                process.reclaimed_pages += record.pages;
            }
            None => process.freed_pages += record.pages,
        }
    }

    pub fn summary(&self, visibility: Visibility, duration_seconds: f64, lost: u64) -> Summary {
        let mut totals: Vec<Totals> = self
            .by_kind
            .iter()
            .map(|(&(event, cause, level), &(events, pages))| Totals { event, cause, level, events, pages })
            .collect();
        totals.sort_by(|a, b| b.pages.cmp(&a.pages).then(b.events.cmp(&a.events)));
        let mut processes: Vec<ProcessTotals> = self.by_process.values().cloned().collect();
        processes.sort_by_key(|p| std::cmp::Reverse((p.reclaimed_pages + p.freed_pages, p.dontneed_bytes)));
        Summary { visibility, duration_seconds, events: self.events, lost, totals, processes }
    }
}

/// How many processes the text summary lists.
const TEXT_PROCESSES: usize = 20;

impl Summary {
    pub fn text(&self) -> String {
        let mut out = format!("\n{} events in {:.1} s, {} lost\n", self.events, self.duration_seconds, self.lost);
        if self.lost > 0 {
            out.push_str("(lost events are not in the totals: the ring buffer was full; use a larger --buffer-kib or narrower filters)\n");
        }
        // What is not in the totals because this plan cannot see it (the
        // tracepoint plan's: every page-table free), worded as `check`'s
        // "misses" lines.
        for limitation in &self.visibility.limitations {
            out.push_str(&format!("(the {} plan misses: {limitation})\n", self.visibility.plan));
        }
        if self.totals.is_empty() {
            return out;
        }
        out.push_str(&format!("\n{:<9} {:<9} {:<7} {:>9} {:>9}\n", "EVENT", "CAUSE", "LEVEL", "EVENTS", "PAGES"));
        for t in &self.totals {
            out.push_str(&format!("{:<9} {:<9} {:<7} {:>9} {:>9}\n", t.event, t.cause, t.level, t.events, t.pages));
        }
        out.push_str(&format!(
            "\n{:<8} {:<16} {:>9} {:>11} {:>9} {:>9}\n",
            "PID", "COMM", "DONTNEED", "BYTES", "RECLAIMED", "FREED"
        ));
        for p in self.processes.iter().take(TEXT_PROCESSES) {
            out.push_str(&format!(
                "{:<8} {:<16} {:>9} {:>11} {:>9} {:>9}\n",
                p.pid,
                p.comm,
                p.dontneed_calls,
                human_bytes(p.dontneed_bytes),
                p.reclaimed_pages,
                p.freed_pages
            ));
        }
        if self.processes.len() > TEXT_PROCESSES {
            out.push_str(&format!("({} more processes; --json lists all)\n", self.processes.len() - TEXT_PROCESSES));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, event: &'static str, cause: &'static str, pages: u64, bytes: Option<u64>) -> Record {
        Record {
            timestamp_ns: 0,
            pid,
            tid: pid,
            comm: format!("p{pid}"),
            cgroup: None,
            cgroup_id: 0,
            event,
            cause,
            level: "pte",
            pages,
            start: None,
            len: None,
            bytes,
        }
    }

    #[test]
    fn totals_by_kind_and_process() {
        let mut tally = Tally::default();
        tally.add(&record(1, "dontneed", "reclaim", 512, Some(1 << 30)));
        tally.add(&record(1, "dontneed", "reclaim", 0, Some(4096)));
        tally.add(&record(2, "free", "unmap", 1, None));
        tally.add(&record(2, "free", "unmap", 1, None));
        let summary = tally.summary(Visibility::default(), 1.0, 3);
        assert_eq!(summary.events, 4);
        assert_eq!(summary.lost, 3);
        assert_eq!(
            summary.totals,
            vec![
                Totals { event: "dontneed", cause: "reclaim", level: "pte", events: 2, pages: 512 },
                Totals { event: "free", cause: "unmap", level: "pte", events: 2, pages: 2 },
            ]
        );
        assert_eq!(summary.processes[0].pid, 1);
        assert_eq!(
            (
                summary.processes[0].dontneed_calls,
                summary.processes[0].dontneed_bytes,
                summary.processes[0].reclaimed_pages
            ),
            (2, (1 << 30) + 4096, 512)
        );
        assert_eq!((summary.processes[1].freed_pages, summary.processes[1].dontneed_calls), (2, 0));
        let text = summary.text();
        assert!(text.contains("4 events in 1.0 s, 3 lost"), "{text}");
        assert!(text.contains("ring buffer was full"), "{text}");
        assert!(!text.contains("plan misses"), "no limitation, no line: {text}");

        let visibility =
            Visibility { plan: "tracepoint", limitations: vec![Limitation::FreesUnseen], ..Visibility::default() };
        let text = tally.summary(visibility, 1.0, 0).text();
        assert!(
            text.contains("(the tracepoint plan misses: page-table frees are not seen: no tracepoint reports them)"),
            "{text}"
        );
        let json = serde_json::to_value(tally.summary(Visibility::default(), 1.0, 0)).expect("serializes");
        for key in ["plan", "frees_observed", "free_levels_named", "causes", "limitations"] {
            assert!(json["visibility"].get(key).is_some(), "{key} in {json}");
        }
    }
}
