//! Command-line interface: raw flags parsed by clap, validated into the
//! options each command runs with.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{kernel::btf::VMLINUX_BTF, probes::plan::ProbeMode};

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
    #[arg(long, global = true, value_enum, env = "PTWATCH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `ptwatch=debug`) [default: info].
    #[arg(long, global = true, env = "PTWATCH_LOG")]
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
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Which probes to use: `auto` picks the most precise the kernel allows
    /// (fentry, then kprobe, then tracepoints); the others force one and
    /// fail if the kernel cannot do it.
    #[arg(long, value_enum, default_value_t = ProbeMode::Auto, env = "PTWATCH_PROBE_MODE")]
    pub probe_mode: ProbeMode,

    /// Kernel BTF to read struct layouts from.
    #[arg(long, default_value = VMLINUX_BTF, env = "PTWATCH_BTF")]
    pub btf: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,

    /// Print the report as JSON.
    #[arg(long)]
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
    #[arg(long)]
    pub all: bool,

    /// How many mappings (or, with --all, processes) to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
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
    #[arg(long, env = "PTWATCH_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// How long series of exited processes stay exported (e.g. 90s, 5m, 1h),
    /// so that short-lived processes are still scraped [default: 5m].
    #[arg(long, value_parser = parse_duration, env = "PTWATCH_EXITED_TTL")]
    pub exited_ttl: Option<Duration>,

    /// How often kernel maps are harvested between scrapes, to notice exits
    /// and release their kernel entries [default: 10s].
    #[arg(long, value_parser = parse_duration, env = "PTWATCH_HARVEST_INTERVAL")]
    pub harvest_interval: Option<Duration>,

    /// Which probes to use: `auto` picks the most precise the kernel allows
    /// (fentry, then kprobe, then tracepoints); the others force one and
    /// fail if the kernel cannot do it [default: auto].
    #[arg(long, value_enum, env = "PTWATCH_PROBE_MODE")]
    pub probe_mode: Option<ProbeMode>,

    /// Kernel BTF to read struct layouts from [default: /sys/kernel/btf/vmlinux].
    #[arg(long, env = "PTWATCH_BTF")]
    pub btf: Option<PathBuf>,

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
        assert_eq!(LogFormat::from_str(&text("log_format"), false).ok(), Some(log.format));
        assert_eq!(text("log"), log.filter);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
