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

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PTWATCH_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `ptwatch=debug`).
    #[arg(long, global = true, default_value = "info", env = "PTWATCH_LOG")]
    pub log: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
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
pub struct AgentArgs {
    /// Address to serve /metrics on.
    #[arg(long, default_value = "0.0.0.0:9977", env = "PTWATCH_LISTEN")]
    pub listen: SocketAddr,

    /// How long series of exited processes stay exported (e.g. 90s, 5m, 1h),
    /// so that short-lived processes are still scraped.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "PTWATCH_EXITED_TTL")]
    pub exited_ttl: Duration,

    /// How often kernel maps are harvested between scrapes, to notice exits
    /// and release their kernel entries.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "PTWATCH_HARVEST_INTERVAL")]
    pub harvest_interval: Duration,

    #[command(flatten)]
    pub probes: ProbeArgs,
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

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
