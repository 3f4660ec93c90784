//! Command-line interface: raw flags parsed by clap, validated into the
//! options each command runs with.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{aggregate::RankBy, kernel::btf::VMLINUX_BTF, probes::plan::ProbeMode};

pub mod generate;
pub mod markdown;

#[derive(Debug, Parser)]
#[command(
    name = "ptwatch",
    version,
    about = "Observe Linux page-table memory and PT_RECLAIM with eBPF",
    long_about = "ptwatch counts the PTE page-table pages that the kernel's PT_RECLAIM frees when \
processes call madvise(MADV_DONTNEED), attributes them to processes and exports them to Prometheus."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Logging flags. `None` when neither the flag nor its variable is set, so
/// that the agent's config file can supply the value (see `config`).
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format [default: text].
    #[arg(long, global = true, value_name = "FORMAT", value_enum, env = "PTWATCH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `ptwatch=debug`) [default: info].
    #[arg(long, global = true, value_name = "FILTER", env = "PTWATCH_LOG")]
    pub log: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per run; boxing would buy nothing")]
pub enum Command {
    /// Run the exporter: attach probes and serve Prometheus metrics.
    ///
    /// Per-process metrics count, for each process (pid, comm), the PTE
    /// page-table pages PT_RECLAIM freed in its address space and its
    /// MADV_DONTNEED calls and bytes. Node totals keep counting processes
    /// after they exit.
    Agent(AgentArgs),
    /// Check what this kernel supports: BTF, PT_RECLAIM (configuration and
    /// behaviour), which probe each event will use and why the others
    /// cannot be used, and which metrics the agent will therefore export.
    ///
    /// It loads and attaches the probes exactly as the agent would, then
    /// detaches them. Exit code 0 when the agent can run.
    Check(CheckArgs),
    /// Estimate the empty PTE page tables of a process, or of every process,
    /// from /proc alone: on any kernel, no eBPF.
    ///
    /// Without PT_RECLAIM (kernels before 6.14), MADV_DONTNEED frees a
    /// process' pages but leaves their PTE tables behind, empty. The numbers:
    ///
    ///   page tables  VmPTE / page size: every page-table page the process
    ///                has (PTE, PMD and PUD tables, and the PTE tables kept
    ///                with anonymous THPs mapped by a PMD).
    ///   needed       one PTE table per 2 MiB span with a page present or
    ///                swapped (/proc/PID/pagemap bits 63 and 62), except spans
    ///                mapped by a PMD (file and shmem THPs, hugetlb); one PMD
    ///                table per 1 GiB and one PUD table per 512 GiB with such
    ///                a span.
    ///   empty        page tables - needed (never below 0), in tables and
    ///                bytes: page-table memory that maps nothing. It is an
    ///                estimate: what changes during the scan, and entries that
    ///                are neither present nor swapped, can move it slightly.
    ///
    ///   method       exact: pagemap read for every span the smaps counters
    ///                could not settle; sampled (with --budget, or in the
    ///                agent): what did not fit was estimated from spans drawn
    ///                at random, and empty comes with a 99 % interval.
    ///
    /// The mappings listed are where empty PTE tables can be: for each
    /// mapping (from /proc/PID/maps), the 2 MiB spans it covers completely
    /// with nothing present or swapped. pagemap cannot tell whether such a
    /// span still has its table (with PT_RECLAIM it usually does not), so
    /// their size is an upper bound; the empty total is the kernel's count.
    ///
    /// Reading another user's process needs root. Exit code 0 when scanned,
    /// 1 when the process does not exist, exits or cannot be read, 2 on usage
    /// errors. docs/scan.md has the details.
    #[command(verbatim_doc_comment)]
    Scan(ScanArgs),
    /// Print page-table events as they happen, then a summary.
    ///
    /// Loads its own instance of the probes (the same plan `agent` would
    /// choose, so it works next to a running agent) and detaches them on
    /// exit: Ctrl-C, SIGTERM or --duration. Columns:
    ///
    ///   TIME     local time of the event (microseconds)
    ///   PID      process the page tables belong to; COMM its name
    ///   CGROUP   cgroup v2 path of the task that ran (- without cgroup v2)
    ///   EVENT    dontneed: a MADV_DONTNEED[_LOCKED] call finished (madvise or
    ///              process_madvise); PAGES = PTE page-table pages it freed
    ///              by PT_RECLAIM (0 on kernels without it), RANGE = the
    ///              range advised (- when several iovecs)
    ///            free: one page-table page freed (fentry/kprobe plans only;
    ///              the tracepoint plan cannot see frees); PAGES = 1
    ///   CAUSE    why the pages went: reclaim (PT_RECLAIM inside DONTNEED),
    ///            unmap (munmap, mremap), exit (exit, execve), collapse, thp,
    ///            other
    ///   LEVEL    page-table level: pte, pmd, pud, p4d (unknown on
    ///            architectures that do not say)
    ///
    /// With the fentry/kprobe plans a DONTNEED call that reclaims shows both
    /// its reclaim frees and, after them, its dontneed event with their sum.
    /// The summary counts events and pages by event, cause and level, and per
    /// process. Events that did not fit in the ring buffer are counted as
    /// lost, shown when the count changes and in the summary.
    ///
    /// Exit code 0 after a normal stop, 1 when the probes cannot be loaded
    /// or the --pid process does not exist, 2 on usage errors.
    /// docs/trace-top.md has the details.
    #[command(verbatim_doc_comment)]
    Trace(TraceArgs),
    /// A refreshing view of the processes (or cgroups) with the most
    /// page-table memory, and their PT_RECLAIM and MADV_DONTNEED rates.
    ///
    /// Columns:
    ///
    ///   PT       page-table memory now: VmPTE of /proc/PID/status for a
    ///            process, `pagetables` of memory.stat for a cgroup (cgroup
    ///            v2 with the memory controller; - otherwise)
    ///   RECL/s   PTE page-table pages freed by PT_RECLAIM per second, over
    ///            the last interval (from ptwatch's own probes)
    ///   DN/s     MADV_DONTNEED calls per second; DN-B/s the bytes they
    ///            advised per second
    ///
    /// Rates start counting when top starts. Keys: p, r, d sort by
    /// page tables, reclaim, DONTNEED; c switches between processes and
    /// cgroups; q, Esc or Ctrl-C quits. With stdout not a terminal it prints
    /// one table per interval instead, columns separated by a tab (in names,
    /// a backslash, tab, newline or other control character is escaped as
    /// \\, \t, \n, \xNN); with --json, one JSON object per interval
    /// (--iterations N stops after N).
    ///
    /// Exit code 0 after q, Ctrl-C, SIGTERM or --iterations; 1 when the
    /// probes cannot be loaded; 2 on usage errors.
    #[command(verbatim_doc_comment)]
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Which probes to use: `auto` picks the most precise the kernel allows
    /// (fentry, then kprobe, then tracepoints); the others force one and
    /// fail if the kernel cannot do it.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = ProbeMode::Auto, env = "PTWATCH_PROBE_MODE")]
    pub probe_mode: ProbeMode,

    /// Kernel BTF to read struct layouts from.
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF, env = "PTWATCH_BTF")]
    pub btf: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,

    /// Print the report as JSON.
    #[arg(long, env = "PTWATCH_CHECK_JSON", value_parser = switch())]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "all"])))]
pub struct ScanArgs {
    /// The process to scan.
    #[arg(value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,

    /// Scan every process instead (kernel threads and processes that exit
    /// meanwhile are skipped) and list those with the most empty tables.
    #[arg(long, env = "PTWATCH_SCAN_ALL", value_parser = switch())]
    pub all: bool,

    /// How many mappings (or, with --all, processes) to list.
    #[arg(long, value_name = "N", default_value_t = 10, env = "PTWATCH_SCAN_TOP")]
    pub top: usize,

    /// CPU time allowed per process (e.g. 20ms), as the agent does: what
    /// does not fit is estimated from a random sample of spans (method
    /// "sampled", with a 99 % interval). Default: read everything (exact).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "PTWATCH_SCAN_BUDGET")]
    pub budget: Option<Duration>,

    /// Print the report as JSON.
    #[arg(long, env = "PTWATCH_SCAN_JSON", value_parser = switch())]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,

    /// Only events of this process (filtered in the kernel).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), env = "PTWATCH_TRACE_PID")]
    pub pid: Option<u32>,

    /// Only processes whose comm is NAME (the kernel keeps 15 characters).
    #[arg(long, value_name = "NAME", env = "PTWATCH_TRACE_COMM")]
    pub comm: Option<String>,

    /// Only tasks in this cgroup v2 directory, given relative to the cgroup
    /// v2 mount (e.g. /system.slice/foo.service) or as a full path
    /// (filtered in the kernel; sub-cgroups are not included).
    #[arg(long, value_name = "PATH", env = "PTWATCH_TRACE_CGROUP")]
    pub cgroup: Option<PathBuf>,

    /// Only events with this cause (repeat, or separate with commas, for
    /// several).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(ptwatch_common::Cause::ALL.map(ptwatch_common::Cause::name)),
        env = "PTWATCH_TRACE_CAUSE"
    )]
    pub cause: Vec<String>,

    /// Only events of at least N page-table pages (e.g. DONTNEED calls that
    /// reclaimed at least N PTE tables; a free is 1 page).
    #[arg(long, value_name = "N", default_value_t = 0, env = "PTWATCH_TRACE_MIN_PAGES")]
    pub min_pages: u64,

    /// Stop after this long (e.g. 30s, 5m) instead of waiting for Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "PTWATCH_TRACE_DURATION")]
    pub duration: Option<Duration>,

    /// Print one JSON object per line: events (`"type":"event"`), lost-event
    /// counts when they change (`"type":"lost"`) and the summary
    /// (`"type":"summary"`).
    #[arg(long, env = "PTWATCH_TRACE_JSON", value_parser = switch())]
    pub json: bool,

    /// Ring buffer size in KiB: a power of two, at least 4.
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib, env = "PTWATCH_TRACE_BUFFER_KIB")]
    pub buffer_kib: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TopSort {
    /// Page-table memory now.
    Pagetable,
    /// PTE pages reclaimed per second.
    Reclaim,
    /// DONTNEED bytes per second.
    Dontneed,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,

    /// Show cgroups instead of processes (press c to switch live).
    #[arg(long, env = "PTWATCH_TOP_CGROUPS", value_parser = switch())]
    pub cgroups: bool,

    /// Sort by this column, largest first (keys p, r, d switch live).
    #[arg(long, value_enum, default_value_t = TopSort::Pagetable, env = "PTWATCH_TOP_SORT")]
    pub sort: TopSort,

    /// Time between refreshes (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s", env = "PTWATCH_TOP_INTERVAL")]
    pub interval: Duration,

    /// Stop after N refreshes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "PTWATCH_TOP_ITERATIONS")]
    pub iterations: Option<u64>,

    /// Rows per table [default: as many as fit in a terminal, 20 otherwise].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "PTWATCH_TOP_LIMIT")]
    pub limit: Option<u64>,

    /// Print one JSON object per refresh instead of a table (also on a
    /// terminal): `{"type":"snapshot",…}` with every row (--limit applies).
    #[arg(long, env = "PTWATCH_TOP_JSON", value_parser = switch())]
    pub json: bool,
}

/// The value parser of every on/off flag: its variable is read as
/// `1`/`true`/`yes`/`on`/`y`/`t` or `0`/`false`/`no`/`off`/`n`/`f` (clap's
/// plain `bool` would take only `true` and `false`).
fn switch() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// A mistake in what the user asked for, found after parsing (e.g. a cgroup
/// that does not exist): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text.parse().map_err(|_| format!("invalid size {text:?}: expected a number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(format!("{kib} KiB: the ring buffer size must be a power of two between 4 and 1048576"));
    }
    Ok(kib)
}

/// The agent's flags. Each is `None` unless given on the command line or
/// through its `PTWATCH_*` variable, so that `config::AgentConfig::resolve`
/// can fall back to the config file, then to the defaults (which live in
/// `config::FileConfig::default` and are repeated in the help text).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML configuration file; flags and PTWATCH_* variables override its
    /// values (docs/configuration.md).
    #[arg(long, value_name = "PATH", env = "PTWATCH_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to serve /metrics on [default: 0.0.0.0:9977].
    #[arg(long, value_name = "ADDR", env = "PTWATCH_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// How long series of exited processes stay exported (e.g. 90s, 5m, 1h),
    /// so that short-lived processes are still scraped [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "PTWATCH_EXITED_TTL")]
    pub exited_ttl: Option<Duration>,

    /// How often the full harvest runs: it reads /proc and cgroup files of
    /// known processes (their page-table bytes, liveness), notices exits and
    /// releases their kernel entries. A scrape reads only the kernel maps,
    /// so counters are always current while the page-table byte gauges of
    /// known processes and cgroups are at most this old [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "PTWATCH_HARVEST_INTERVAL")]
    pub harvest_interval: Option<Duration>,

    /// Which probes to use: `auto` picks the most precise the kernel allows
    /// (fentry, then kprobe, then tracepoints); the others force one and
    /// fail if the kernel cannot do it [default: auto].
    #[arg(long, value_name = "MODE", value_enum, env = "PTWATCH_PROBE_MODE")]
    pub probe_mode: Option<ProbeMode>,

    /// How often the empty page tables of every process are estimated
    /// (ptwatch_*_empty_pagetable_bytes): a pass reads the processes that
    /// changed, in the background, never during a scrape [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "PTWATCH_EMPTY_TABLES_INTERVAL")]
    pub empty_tables_interval: Option<Duration>,

    /// CPU time one estimation pass may use, its census of every process
    /// included: a process too big for what is left is sampled (its
    /// estimate then has an error bound), the ones not reached wait for the
    /// next pass [default: 300ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "PTWATCH_EMPTY_TABLES_BUDGET")]
    pub empty_tables_budget: Option<Duration>,

    /// Kernel BTF to read struct layouts from [default: /sys/kernel/btf/vmlinux].
    #[arg(long, value_name = "PATH", env = "PTWATCH_BTF")]
    pub btf: Option<PathBuf>,

    /// At most N processes get their own per-process series, ranked by
    /// --rank-processes-by; the others are summed into series labelled
    /// pid="other",comm="other". 0: no limit [default: 100].
    #[arg(long, value_name = "N", env = "PTWATCH_TOP_PROCESSES")]
    pub top_processes: Option<usize>,

    /// What --top-processes ranks by: page-table memory now, or PTE pages
    /// reclaimed [default: pagetable-bytes].
    #[arg(long, value_name = "RANK", value_enum, env = "PTWATCH_RANK_PROCESSES_BY")]
    pub rank_processes_by: Option<RankBy>,

    /// Own series only for processes with at least this much page-table
    /// memory, in bytes (or meeting --min-process-reclaimed-pages).
    #[arg(long, value_name = "BYTES", env = "PTWATCH_MIN_PROCESS_PAGETABLE_BYTES")]
    pub min_process_pagetable_bytes: Option<u64>,

    /// Own series only for processes that had at least this many PTE pages
    /// reclaimed (or meeting --min-process-pagetable-bytes).
    #[arg(long, value_name = "PAGES", env = "PTWATCH_MIN_PROCESS_RECLAIMED_PAGES")]
    pub min_process_reclaimed_pages: Option<u64>,

    /// Processes the kernel counts in entries of their own (about 350 bytes
    /// of kernel memory each, allocated at start). Beyond it, node and
    /// cgroup totals stay exact and the processes that do not fit count in
    /// pid="other", which ptwatch_map_update_failures_total and
    /// ptwatch_overflow_events_total report [default: 16384].
    #[arg(long, value_name = "N", env = "PTWATCH_MAX_TRACKED_PROCESSES",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_TRACKED_PROCESSES_LIMIT)))]
    pub max_tracked_processes: Option<u32>,

    /// PEM certificate chain: serve HTTPS instead of HTTP (needs --tls-key).
    #[arg(long, value_name = "PATH", env = "PTWATCH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", env = "PTWATCH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Require HTTP basic auth with this user on /metrics (needs
    /// --basic-auth-password-file); /healthz and /readyz stay open.
    #[arg(long, value_name = "USER", env = "PTWATCH_BASIC_AUTH_USER")]
    pub basic_auth_user: Option<String>,

    /// File holding the basic auth password (a trailing newline is ignored).
    #[arg(long, value_name = "PATH", env = "PTWATCH_BASIC_AUTH_PASSWORD_FILE")]
    pub basic_auth_password_file: Option<PathBuf>,

    /// File holding a bearer token required on /metrics (a trailing newline
    /// is ignored); /healthz and /readyz stay open.
    #[arg(long, value_name = "PATH", env = "PTWATCH_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// The listener's limits (docs/http.md), `[http]` in the config file.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Connections served at once, TLS handshakes included. At the cap the
    /// oldest connection not answering a request is closed to make room;
    /// lowered to fit the open-file limit [default: 512].
    #[arg(long = "http-max-connections", value_name = "N", env = "PTWATCH_HTTP_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Time a client gets to complete the TLS handshake, then to send a
    /// request's line and headers (from connecting, or from the first byte
    /// of a next request) [default: 10s].
    #[arg(long = "http-header-timeout", value_name = "D", value_parser = parse_duration,
          env = "PTWATCH_HTTP_HEADER_TIMEOUT")]
    pub header_timeout: Option<Duration>,

    /// How long a kept-alive connection may wait for its next request
    /// [default: 90s].
    #[arg(long = "http-idle-timeout", value_name = "D", value_parser = parse_duration,
          env = "PTWATCH_HTTP_IDLE_TIMEOUT")]
    pub idle_timeout: Option<Duration>,

    /// Time to answer a request, from its headers to the last byte of the
    /// response [default: 30s].
    #[arg(long = "http-write-timeout", value_name = "D", value_parser = parse_duration,
          env = "PTWATCH_HTTP_WRITE_TIMEOUT")]
    pub write_timeout: Option<Duration>,

    /// Largest request line plus headers, in bytes (1024 to 1048576); larger
    /// requests get 431 [default: 8192].
    #[arg(long = "http-max-header-bytes", value_name = "BYTES", env = "PTWATCH_HTTP_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<u32>,

    /// /metrics responses in progress at once; more scrapes wait for a
    /// slot. Concurrent scrapes share renders either way [default: 8].
    #[arg(long = "http-max-concurrent-scrapes", value_name = "N", env = "PTWATCH_HTTP_MAX_CONCURRENT_SCRAPES",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_scrapes: Option<u32>,
}

/// Parse `90`, `90s`, `5m`, `2h`, `500ms` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected a number with an optional unit (ms, s, m, h)"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(format!("invalid duration unit {unit:?} in {text:?}: use ms, s, m or h")),
    };
    if duration.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0s").is_err());
    }

    /// The help text repeats the defaults of `config::FileConfig`; keep them equal.
    #[test]
    fn help_states_the_real_defaults() {
        use clap::CommandFactory;
        let defaults = crate::config::FileConfig::default();
        let log = crate::config::LogSection::default();
        let mut cli = Cli::command();
        let mut stated = std::collections::HashMap::new();
        let global: Vec<_> = cli.get_arguments().cloned().collect();
        let agent = cli.find_subcommand_mut("agent").expect("agent subcommand");
        for arg in agent.get_arguments().chain(&global) {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            if let Some((_, rest)) = help.split_once("[default: ") {
                let value = rest.split(']').next().unwrap_or_default().to_owned();
                stated.insert(arg.get_id().to_string(), value);
            }
        }
        let text = |id: &str| stated.get(id).cloned().unwrap_or_else(|| panic!("no default stated for {id}"));
        assert_eq!(text("listen").parse::<SocketAddr>().ok(), Some(defaults.listen));
        assert_eq!(parse_duration(&text("exited_ttl")), Ok(defaults.exited_ttl));
        assert_eq!(parse_duration(&text("harvest_interval")), Ok(defaults.harvest_interval));
        assert_eq!(ProbeMode::from_str(&text("probe_mode"), false).ok(), Some(defaults.probe_mode));
        assert_eq!(PathBuf::from(text("btf")), defaults.btf);
        assert_eq!(text("top_processes").parse::<usize>().ok(), Some(defaults.top_processes));
        assert_eq!(RankBy::from_str(&text("rank_processes_by"), false).ok(), Some(defaults.rank_processes_by));
        assert_eq!(text("max_tracked_processes").parse::<u32>().ok(), Some(defaults.max_tracked_processes));
        assert_eq!(LogFormat::from_str(&text("log_format"), false).ok(), Some(log.format));
        assert_eq!(text("log"), log.filter);
        assert_eq!(parse_duration(&text("empty_tables_interval")), Ok(defaults.empty_tables.interval));
        assert_eq!(parse_duration(&text("empty_tables_budget")), Ok(defaults.empty_tables.budget));
        let http = crate::config::HttpSection::default();
        assert_eq!(text("max_connections").parse(), Ok(http.max_connections));
        assert_eq!(parse_duration(&text("header_timeout")), Ok(http.header_timeout));
        assert_eq!(parse_duration(&text("idle_timeout")), Ok(http.idle_timeout));
        assert_eq!(parse_duration(&text("write_timeout")), Ok(http.write_timeout));
        assert_eq!(text("max_header_bytes").parse(), Ok(http.max_header_bytes));
        assert_eq!(text("max_concurrent_scrapes").parse(), Ok(http.max_concurrent_scrapes));
    }

    /// Every option has its variable, named by the rule docs/cli.md states
    /// (the agent's options and the ones every command shares:
    /// `PTWATCH_<OPTION>`; another command's own: `PTWATCH_<COMMAND>_<OPTION>`),
    /// and no two options share one unless they are the same option.
    #[test]
    fn every_option_has_its_variable() {
        let shared: Vec<String> = ProbeArgs::augment_args(clap::Command::new("probes"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let command = generate::command();
        let mut owners: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let mut problems = Vec::new();
        for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(
                    arg.get_action(),
                    clap::ArgAction::Help | clap::ArgAction::HelpLong | clap::ArgAction::Version
                ) {
                    continue;
                }
                let option = long.to_uppercase().replace('-', "_");
                let id = arg.get_id().to_string();
                let expected = if sub.get_name() == "agent" || arg.is_global_set() || shared.contains(&id) {
                    format!("PTWATCH_{option}")
                } else {
                    format!("PTWATCH_{}_{option}", sub.get_name().to_uppercase())
                };
                let actual = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                if actual.as_deref() != Some(expected.as_str()) {
                    problems
                        .push(format!("ptwatch {} --{long}: env = {actual:?}, expected {expected:?}", sub.get_name()));
                }
                if let Some(previous) = owners.insert(expected.clone(), format!("--{long}")) {
                    if previous != format!("--{long}") {
                        problems.push(format!("{expected} is both {previous} and --{long}"));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "options without their PTWATCH_* variable:\n{}", problems.join("\n"));
    }

    /// On/off flags read their variable as `1`, `yes`, ... too.
    #[test]
    fn switches_take_the_usual_spellings() {
        let command = generate::command();
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| matches!(a.get_action(), clap::ArgAction::SetTrue)) {
                // The same value parser, fed on the command line instead of
                // through the (process-wide) environment.
                let probe = clap::Command::new("probe").arg(arg.clone().action(clap::ArgAction::Set).num_args(1));
                let long = format!("--{}", arg.get_long().expect("a switch has a long name"));
                for (text, value) in [("1", true), ("yes", true), ("true", true), ("0", false), ("off", false)] {
                    let parsed = probe.clone().try_get_matches_from(["probe", long.as_str(), text]);
                    let parsed = parsed.ok().and_then(|m| m.get_one::<bool>(arg.get_id().as_str()).copied());
                    assert_eq!(parsed, Some(value), "ptwatch {} {long} = {text}", sub.get_name());
                }
            }
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
