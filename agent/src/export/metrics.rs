//! `/metrics`: at every scrape, the kernel maps are harvested and the
//! records written straight into the response ([`Metrics::render`]), in the
//! format the scraper asked for. No background copy can go stale, and no
//! metric objects are built per scrape.
//!
//! What each family means is in `families.rs` and `docs/metrics.md`.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use axum::body::Bytes;
use ptwatch_common::{Cause, Level, NodeCounters, ProcessKey};

use super::{
    exposition::{label_text, Exposition, Format, Histogram, Section},
    families::{self as f, Family},
    self_metrics::SelfSource,
};
use crate::{
    aggregate::{BootClock, Counts, Export, ProcessRecord, Series, View},
    probes::{plan::Attach, ProbeError},
};

pub use super::families::exported_families;

/// Facts about the agent fixed at start-up.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub version: &'static str,
    pub kernel: String,
    pub probe_mode: Attach,
    /// [`crate::probes::ReclaimAccounting::method`].
    pub reclaim_accounting: &'static str,
    pub pt_reclaim_supported: bool,
    /// Each event and how it is attached (None: the kernel cannot show it
    /// with this plan).
    pub probes: Vec<(&'static str, Option<Attach>)>,
    /// Page-table frees are probed (fentry or kprobe plan): the families
    /// with [`f::Plans::FreeProbes`] are exported.
    pub frees_probed: bool,
    /// Turns process start times into the `start_time` label.
    pub clock: BootClock,
    /// What the plan costs processes it does not trace
    /// ([`crate::probes::plan::BystanderCost::as_str`]).
    pub bystander_cost: &'static str,
}

impl AgentInfo {
    pub fn new(probes: &crate::probes::Probes, pt_reclaim_supported: bool) -> Self {
        let plan = probes.plan();
        Self {
            version: env!("CARGO_PKG_VERSION"),
            kernel: crate::kernel::procfs::kernel_release(),
            probe_mode: probes.mode(),
            reclaim_accounting: probes.accounting().method(),
            pt_reclaim_supported,
            probes: plan.events().into_iter().map(|(event, attach)| (event.as_str(), attach)).collect(),
            frees_probed: plan.frees_observed(),
            clock: BootClock::detect(),
            bystander_cost: probes.mode().bystander_cost().as_str(),
        }
    }

    fn exports(&self, family: &Family) -> bool {
        family.exported_with(self.frees_probed)
    }
}

/// Something that harvests kernel counters and lends the result.
pub trait Harvest: Send {
    /// `full`: also ask the host about every process and cgroup (the
    /// periodic harvest); otherwise only about new ones (a scrape), see
    /// [`crate::aggregate::Aggregator::harvest_counters`].
    fn harvest(&mut self, full: bool) -> Result<(), ProbeError>;
    fn view(&self) -> View<'_>;
}

impl<S, L, H> Harvest for crate::aggregate::Aggregator<S, L, H>
where
    S: crate::aggregate::CounterSource + Send,
    L: crate::aggregate::Liveness + Send,
    H: crate::aggregate::Host + Send,
{
    fn harvest(&mut self, full: bool) -> Result<(), ProbeError> {
        let now = Instant::now();
        if full {
            self.harvest(now)?;
        } else {
            self.harvest_counters(now)?;
        }
        Ok(())
    }

    fn view(&self) -> View<'_> {
        crate::aggregate::Aggregator::view(self)
    }
}

/// A whole exposition, rendered on demand (what the HTTP server serves).
pub trait Render: Send + Sync {
    fn render(&self, format: Format) -> String;

    /// The same as a response body; an implementation may recycle the
    /// buffers of bodies already sent.
    fn render_body(&self, format: Format) -> Bytes {
        self.render(format).into()
    }
}

/// How long the last body's buffer is kept for the next scrape after the
/// last one (Prometheus scrapes every 15 s to 1 min): an agent nobody
/// scrapes keeps no body.
const SPARE_KEPT_FOR: Duration = Duration::from_secs(120);

/// The buffer of a sent body, kept for the next one: writing 1.2 MB into
/// fresh pages (10,000 series) cost a scrape more page faults and zeroing
/// than the writing itself.
#[derive(Default)]
struct Spare {
    /// The buffer, and when a body last came back.
    slot: Mutex<(Option<String>, Option<Instant>)>,
}

impl Spare {
    fn lock(&self) -> MutexGuard<'_, (Option<String>, Option<Instant>)> {
        self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> String {
        self.lock().0.take().unwrap_or_default()
    }

    /// Keep `buffer` (one at most: concurrent scrapes share bodies).
    fn put(&self, buffer: String) {
        let mut slot = self.lock();
        if slot.0.as_ref().is_none_or(|kept| kept.capacity() < buffer.capacity()) {
            slot.0 = Some(buffer);
        }
        slot.1 = Some(Instant::now());
    }

    /// Drop the buffer if no body came back for [`SPARE_KEPT_FOR`].
    fn expire(&self) {
        let mut slot = self.lock();
        if slot.1.is_none_or(|at| at.elapsed() >= SPARE_KEPT_FOR) {
            slot.0 = None;
        }
    }
}

/// A response body whose buffer goes back to its [`Spare`] once the last
/// byte is sent (when the last clone of the `Bytes` is dropped).
struct Recycled {
    text: String,
    spare: Arc<Spare>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.spare.put(std::mem::take(&mut self.text));
    }
}

/// Buckets of `ptwatch_scrape_duration_seconds`: 0.25 ms to 2.5 s, finest
/// around the 2 ms goal of a 10,000-series scrape (docs/benchmarks.md).
const SCRAPE_BUCKETS: &[f64] = &[0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The agent's metrics: its aggregator, harvested at each scrape, and its
/// own statistics.
pub struct Metrics {
    state: Mutex<State>,
    info: AgentInfo,
    /// The agent's own process and programs; None in unit tests.
    self_source: Option<Box<dyn SelfSource>>,
    scrape_duration: Histogram,
    /// Size of the last body, to allocate the next one at once.
    last_size: AtomicUsize,
    /// The buffer of the last body sent, for the next.
    spare: Arc<Spare>,
    /// The empty-page-table estimates (their own task fills it); None in
    /// unit tests of the other families.
    empty_tables: Option<Arc<crate::empty_tables::Latest>>,
    /// More families, written after the agent's own.
    sections: Vec<Arc<dyn Section>>,
}

struct State {
    aggregator: Box<dyn Harvest>,
    scrape_errors: u64,
    /// The rows' allocation, kept empty between scrapes (at 10,000 series
    /// a fresh one cost page faults at each scrape).
    rows: Vec<Row<'static>>,
}

impl Metrics {
    pub fn new(aggregator: Box<dyn Harvest>, info: AgentInfo) -> Self {
        Self {
            state: Mutex::new(State { aggregator, scrape_errors: 0, rows: Vec::new() }),
            info,
            self_source: None,
            scrape_duration: Histogram::new(SCRAPE_BUCKETS),
            last_size: AtomicUsize::new(0),
            spare: Arc::default(),
            empty_tables: None,
            sections: Vec::new(),
        }
    }

    /// Also export the agent's own metrics, read from `source` at each scrape.
    pub fn with_self_source(mut self, source: Box<dyn SelfSource>) -> Self {
        self.self_source = Some(source);
        self
    }

    /// Also export the empty-page-table estimates found in `latest`.
    pub fn with_empty_tables(mut self, latest: Arc<crate::empty_tables::Latest>) -> Self {
        self.empty_tables = Some(latest);
        self
    }

    /// Also write the families of `section` at each scrape.
    pub fn with_section(mut self, section: Arc<dyn Section>) -> Self {
        self.sections.push(section);
        self
    }

    /// The live processes of the last harvest, as the empty-table estimator
    /// takes them.
    pub fn tracked(&self) -> Vec<crate::empty_tables::Tracked> {
        super::empty_tables::tracked(&self.lock().aggregator.view())
    }

    /// The periodic full harvest (also when nobody scrapes, so that exits
    /// are noticed and kernel entries taken out). Returns whether the kernel
    /// maps could be read (readiness waits for the first success).
    pub fn refresh(&self) -> bool {
        self.spare.expire();
        update(&mut self.lock(), true)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Metrics {
    /// Harvest the kernel maps (what `/proc` and cgroupfs say comes from
    /// the periodic full harvest, `--harvest-interval`) and write everything
    /// into `buffer`.
    fn write(&self, format: Format, mut buffer: String) -> String {
        let started = Instant::now();
        let reading = self.self_source.as_ref().map(|source| source.read()).unwrap_or_default();
        let expected = self.last_size.load(Ordering::Relaxed);
        buffer.clear();
        buffer.reserve(expected + expected / 8);
        let mut out = Exposition::reusing(format, buffer);
        {
            let mut state = self.lock();
            update(&mut state, false);
            let State { aggregator, scrape_errors, rows } = &mut *state;
            let view = aggregator.view();
            let mut kept = recycle(std::mem::take(rows));
            collect_rows(&mut kept, &view, &self.info);
            render_view(&mut out, &view, &kept, &self.info);
            render_health(&mut out, &view, &self.info, *scrape_errors);
            if let Some(snapshot) = self.empty_tables.as_ref().and_then(|latest| latest.get()) {
                let growing = kept.iter().filter_map(|row| Some((row.labels, row.growing?)));
                super::empty_tables::render(&mut out, &snapshot, growing);
            }
            *rows = recycle(kept);
        }
        reading.render(&mut out);
        for section in &self.sections {
            section.write(&mut out);
        }
        self.scrape_duration.render(&mut out.family(&f::SCRAPE_DURATION));
        let body = out.finish();
        self.last_size.store(body.len(), Ordering::Relaxed);
        // This response's own time shows from the next scrape on.
        self.scrape_duration.observe(started.elapsed().as_secs_f64());
        body
    }
}

impl Render for Metrics {
    fn render(&self, format: Format) -> String {
        self.write(format, String::new())
    }

    fn render_body(&self, format: Format) -> Bytes {
        let text = self.write(format, self.spare.take());
        Bytes::from_owner(Recycled { text, spare: Arc::clone(&self.spare) })
    }
}

/// The families of one harvest (without the agent's own statistics): what
/// a scrape shows, for callers that hold an aggregator themselves.
pub fn exposition(view: &View<'_>, info: &AgentInfo, format: Format) -> String {
    let mut out = Exposition::new(format, 0);
    let mut rows = Vec::new();
    collect_rows(&mut rows, view, info);
    render_view(&mut out, view, &rows, info);
    render_health(&mut out, view, info, 0);
    out.finish()
}

/// Harvest; on failure count it and keep the previous values.
fn update(state: &mut State, full: bool) -> bool {
    match state.aggregator.harvest(full) {
        Ok(()) => true,
        Err(err) => {
            state.scrape_errors += 1;
            tracing::warn!(error = %crate::error_chain::ErrorChain(&err), "reading kernel maps failed; exporting the previous values");
            false
        }
    }
}

/// The labels of the series that carry everything without a series of its own.
pub(super) const OTHER_LABELS: &str = r#"pid="other",comm="other""#;

/// A series' labels, rendered when it is first exported and kept.
pub(super) fn series_labels<'a>(record: &ProcessRecord, series: &'a Series, clock: &BootClock) -> &'a str {
    series.labels.get_or_init(|| {
        let pid = record.pid().to_string();
        let start = clock.unix_time(record.key.start_time_ns);
        let (path, container, pod) = match record.cgroup.as_deref() {
            Some(cgroup) => (cgroup.path.as_str(), cgroup.container_id.as_str(), cgroup.pod_uid.as_str()),
            None => ("", "", ""),
        };
        label_text(f::PROCESS_LABELS, &[&pid, &series.comm, &start, path, container, pod]).into()
    })
}

fn cgroup_labels(totals: &crate::aggregate::CgroupTotals) -> &str {
    totals.label_text.get_or_init(|| {
        let labels = &totals.labels;
        label_text(f::CGROUP_LABELS, &[&labels.path, &labels.container_id, &labels.pod_uid]).into()
    })
}

/// `cause="…",level="…"` of each cell of the free matrix.
fn cell_labels() -> impl Iterator<Item = (Cause, Level, String)> {
    Cause::ALL.into_iter().flat_map(|cause| {
        Level::ALL
            .into_iter()
            .map(move |level| (cause, level, label_text(&["cause", "level"], &[cause.name(), level.name()])))
    })
}

/// A counter family and the field of [`Counts`] it shows.
type CountsFamily = (&'static Family, fn(&Counts) -> u64);

/// One exported per-process series, copied out of its record in one walk
/// of the records: the families are then written from these rows, which
/// lie together in memory, instead of walking the records (~600 bytes
/// each, scattered) once per family, which at 10,000 series cost more in
/// cache misses than writing the text.
struct Row<'a> {
    labels: &'a str,
    /// Reclaimed pages, DONTNEED calls, DONTNEED bytes.
    counters: [u64; 3],
    /// Page-table memory, for a series that grows on its own.
    pagetable_bytes: Option<u64>,
    own: &'a Counts,
    /// The process, if the series is its current one, grows on its own
    /// and the process lives (what the empty-table families list).
    growing: Option<ProcessKey>,
}

/// `rows`' allocation, emptied, for rows of another lifetime. (Collecting
/// a vector's `into_iter` into one of a type of the same size and
/// alignment reuses its allocation; with no element, the closure never
/// runs.)
fn recycle<'b>(mut rows: Vec<Row<'_>>) -> Vec<Row<'b>> {
    rows.clear();
    rows.into_iter().map(|_| unreachable!("emptied")).collect()
}

/// The exported per-process series, in pid order, into `rows` (empty).
fn collect_rows<'a>(rows: &mut Vec<Row<'a>>, view: &View<'a>, info: &AgentInfo) {
    rows.reserve(usize::try_from(view.snapshot.own_series).unwrap_or(0));
    for record in view.records() {
        for series in record.all_series() {
            let Some(own) = series.exported() else { continue };
            // A gauge only for series that grow: a frozen series' process
            // is counted in `other`'s page-table memory (a gauge may just stop).
            let pagetable_bytes = match (std::ptr::eq(series, &record.series), record.series.export) {
                (true, Export::Own) => record.pagetable_bytes,
                _ => None,
            };
            let growing = std::ptr::eq(series, &record.series) && series.export == Export::Own && record.is_live();
            rows.push(Row {
                labels: series_labels(record, series, &info.clock),
                counters: [own.reclaimed(), own.dontneed_calls, own.dontneed_bytes],
                pagetable_bytes,
                own,
                growing: growing.then_some(record.key),
            });
        }
    }
}

/// The per-process (from `rows`), per-cgroup and node families.
fn render_view(out: &mut Exposition, view: &View<'_>, rows: &[Row<'_>], info: &AgentInfo) {
    let folded = &view.snapshot.folded;
    let counters = [&f::PTE_PAGES_RECLAIMED, &f::DONTNEED_CALLS, &f::DONTNEED_BYTES];
    let folded_counters = [folded.counts.reclaimed(), folded.counts.dontneed_calls, folded.counts.dontneed_bytes];
    for (index, family) in counters.into_iter().enumerate() {
        let mut samples = out.family(family);
        for row in rows {
            samples.sample(row.labels, "", row.counters[index]);
        }
        samples.sample(OTHER_LABELS, "", folded_counters[index]);
    }
    let cells: Vec<(Cause, Level, String)> = cell_labels().collect();
    if info.exports(&f::PAGETABLE_PAGES_FREED) {
        let mut samples = out.family(&f::PAGETABLE_PAGES_FREED);
        for row in rows {
            // Only cells that counted: the matrix has 30.
            for (cause, level, cell) in &cells {
                let pages = row.own.freed(*cause, *level);
                if pages > 0 {
                    samples.sample(row.labels, cell, pages);
                }
            }
        }
        for (cause, level, cell) in &cells {
            let pages = folded.counts.freed(*cause, *level);
            if pages > 0 {
                samples.sample(OTHER_LABELS, cell, pages);
            }
        }
    }
    {
        let mut samples = out.family(&f::PROCESS_PAGETABLE_BYTES);
        for row in rows {
            if let Some(bytes) = row.pagetable_bytes {
                samples.sample(row.labels, "", bytes);
            }
        }
        samples.sample(OTHER_LABELS, "", folded.pagetable_bytes);
    }

    let cgroup_counters: [CountsFamily; 3] = [
        (&f::CGROUP_PTE_PAGES_RECLAIMED, Counts::reclaimed),
        (&f::CGROUP_DONTNEED_CALLS, |c| c.dontneed_calls),
        (&f::CGROUP_DONTNEED_BYTES, |c| c.dontneed_bytes),
    ];
    for (family, value) in cgroup_counters {
        let mut samples = out.family(family);
        for cgroup in view.cgroups() {
            samples.sample(cgroup_labels(cgroup), "", value(&cgroup.counts()));
        }
    }
    if info.exports(&f::CGROUP_PAGETABLE_PAGES_FREED) {
        let mut samples = out.family(&f::CGROUP_PAGETABLE_PAGES_FREED);
        for cgroup in view.cgroups() {
            let counts = cgroup.counts();
            for (cause, level, cell) in &cells {
                let pages = counts.freed(*cause, *level);
                if pages > 0 {
                    samples.sample(cgroup_labels(cgroup), cell, pages);
                }
            }
        }
    }
    {
        let mut samples = out.family(&f::CGROUP_PAGETABLE_BYTES);
        for cgroup in view.cgroups() {
            if let Some(bytes) = cgroup.pagetable_bytes {
                samples.sample(cgroup_labels(cgroup), "", bytes);
            }
        }
    }

    let node = &view.snapshot.node;
    let node_counts = Counts::of_node(node);
    if let Some(bytes) = view.snapshot.node_pagetable_bytes {
        out.family(&f::NODE_PAGETABLE_BYTES).sample("", "", bytes);
    }
    out.family(&f::NODE_PTE_PAGES_RECLAIMED).sample("", "", node_counts.reclaimed());
    if info.exports(&f::NODE_PAGETABLE_PAGES_FREED) {
        // Every cell, zeros included: 30 series, and "none of this cause"
        // is worth seeing at node level.
        let mut samples = out.family(&f::NODE_PAGETABLE_PAGES_FREED);
        for (cause, level, cell) in &cells {
            samples.sample(cell, "", node_counts.freed(*cause, *level));
        }
    }
    out.family(&f::NODE_DONTNEED_CALLS).sample("", "", node.dontneed_calls);
    out.family(&f::NODE_DONTNEED_BYTES).sample("", "", node.dontneed_bytes);
    out.family(&f::APPROXIMATE_CALLS).sample("", "", node.approximate_calls);
    out.family(&f::UNMEASURED_REQUESTS).sample("", "", node.unmeasured_requests);
}

/// How complete the counts are, and the agent's own facts.
fn render_health(out: &mut Exposition, view: &View<'_>, info: &AgentInfo, scrape_errors: u64) {
    let snapshot = view.snapshot;
    let node: &NodeCounters = &snapshot.node;
    {
        let mut samples = out.family(&f::MAP_UPDATE_FAILURES);
        for (map, failures) in [
            (ptwatch_common::names::PROCESS_COUNTERS, node.process_map_overflows),
            (ptwatch_common::names::OVERFLOW_COUNTERS, node.cgroup_map_overflows),
            (ptwatch_common::names::THREAD_CONTEXT, node.context_update_failures),
        ] {
            samples.values(&[map], failures);
        }
    }
    {
        let mut samples = out.family(&f::OVERFLOW_EVENTS);
        for (reason, events) in [
            ("process_map_full", node.process_map_overflows),
            ("cgroup_map_full", node.cgroup_map_overflows),
            ("no_owner", node.unowned_frees),
        ] {
            samples.values(&[reason], events);
        }
    }
    out.family(&f::LOST_EVENTS).sample("", "", node.lost_events);
    out.family(&f::CONTEXT_EXIT_MISSES).sample("", "", node.context_exit_misses);
    out.family(&f::THREAD_CONTEXTS_REAPED).sample("", "", snapshot.reaped_thread_contexts);
    out.family(&f::IO_REQUESTS_REAPED).sample("", "", snapshot.reaped_io_requests);
    out.family(&f::TRACKED_PROCESSES).sample("", "", snapshot.own_series);
    out.family(&f::FOLDED_PROCESSES).sample("", "", snapshot.folded.processes);
    out.family(&f::SCRAPE_ERRORS).sample("", "", scrape_errors);
    out.family(&f::BUILD_INFO).values(&[info.version, &info.kernel, info.probe_mode.as_str()], 1u64);
    {
        let mut samples = out.family(&f::PROBE_INFO);
        for (event, attach) in &info.probes {
            samples.values(&[event, attach.map_or("none", Attach::as_str), info.bystander_cost], 1u64);
        }
    }
    out.family(&f::PT_RECLAIM_SUPPORTED).sample("", "", info.pt_reclaim_supported);
    {
        let mut samples = out.family(&f::PROBE_ATTACHED);
        for (event, attach) in &info.probes {
            samples.values(&[event], attach.is_some());
        }
    }
    {
        let mut entries = out.family(&f::MAP_ENTRIES);
        for map in &snapshot.maps {
            entries.values(&[map.name], map.entries);
        }
    }
    {
        let mut capacity = out.family(&f::MAP_MAX_ENTRIES);
        for map in &snapshot.maps {
            capacity.values(&[map.name], map.max_entries);
        }
    }
    out.family(&f::RECLAIM_ACCOUNTING).values(&[info.reclaim_accounting], 1u64);
}

#[cfg(test)]
mod tests;
