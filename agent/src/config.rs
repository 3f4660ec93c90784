//! The agent's configuration: flags, `PTWATCH_*` environment variables and a
//! TOML file, merged into one validated [`AgentConfig`].
//!
//! Precedence is flag > environment variable > file > default. clap already
//! merges the first two (every flag has an `env`), and leaves an option `None`
//! when neither is given; the file's sections come with their defaults filled
//! in by serde, so "flag or env, else file" yields all four levels. As in
//! ripgrep, the raw values (`cli::AgentArgs`, [`FileConfig`]) are kept apart
//! from the resolved one, which is the only thing the agent sees.
//!
//! Everything the user names is read and checked here, before logging starts
//! and before any probe is attached: the file itself, the TLS certificate and
//! key, the auth secrets and the log filter. Any problem is a [`ConfigError`],
//! which `main` prints as one line and turns into exit code 2 (a usage error:
//! the input is wrong, nothing was attempted). See `docs/configuration.md`.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{de, Deserialize, Deserializer};

use crate::{
    aggregate::{RankBy, Selection},
    cli::{parse_duration, AgentArgs, LogArgs, LogFormat},
    export::{
        server::{Auth, HttpLimits, LimitsError},
        tls,
    },
    kernel::btf::VMLINUX_BTF,
    probes::plan::ProbeMode,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors, unknown keys and bad values: toml reports all three
    /// with a position.
    #[error("config file {path}{position}: {message}")]
    Parse { path: PathBuf, position: Position, message: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot read {what} file {path}")]
    Secret {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} file {path} is empty")]
    EmptySecret { what: &'static str, path: PathBuf },
    #[error("invalid log filter {filter:?} (from {origin}): {message}")]
    LogFilter { filter: String, origin: String, message: String },
    /// Options that are valid alone but not together.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Http(#[from] LimitsError),
}

/// `:line:column` of a parse error, when toml knows it.
#[derive(Debug, Default)]
pub struct Position(Option<(usize, usize)>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

/// The TOML file, with every default filled in. Keys mirror the flags
/// (`--exited-ttl` ↔ `exited_ttl`); paths relative to the file's directory.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub listen: SocketAddr,
    #[serde(deserialize_with = "duration")]
    pub exited_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub harvest_interval: Duration,
    #[serde(deserialize_with = "value_enum")]
    pub probe_mode: ProbeMode,
    pub btf: PathBuf,
    pub top_processes: usize,
    #[serde(deserialize_with = "value_enum")]
    pub rank_processes_by: RankBy,
    pub min_process_pagetable_bytes: Option<u64>,
    pub min_process_reclaimed_pages: Option<u64>,
    #[serde(deserialize_with = "max_tracked_processes")]
    pub max_tracked_processes: u32,
    pub log: LogSection,
    pub tls: TlsSection,
    pub auth: AuthSection,
    pub empty_tables: EmptyTablesSection,
    pub http: HttpSection,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            // Every interface: Prometheus usually scrapes from another host.
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9977)),
            // Long enough for a 1-minute scrape interval to see a process
            // that lived for a millisecond, several times.
            exited_ttl: Duration::from_secs(5 * 60),
            // Exits are noticed (and kernel entries released) at least this
            // often even when nobody scrapes.
            harvest_interval: Duration::from_secs(10),
            // The most precise probes the kernel allows.
            probe_mode: ProbeMode::Auto,
            btf: PathBuf::from(VMLINUX_BTF),
            // Own series for the processes that matter most, everything
            // else summed: see `aggregate::selection`.
            top_processes: Selection::default().top,
            rank_processes_by: Selection::default().rank_by,
            min_process_pagetable_bytes: None,
            min_process_reclaimed_pages: None,
            // Processes with their own kernel entry; those beyond count in
            // their cgroup's overflow slot (docs/metrics.md#capacity).
            max_tracked_processes: ptwatch_common::DEFAULT_MAX_TRACKED_PROCESSES,
            log: LogSection::default(),
            tls: TlsSection::default(),
            auth: AuthSection::default(),
            empty_tables: EmptyTablesSection::default(),
            http: HttpSection::default(),
        }
    }
}

/// `[empty_tables]`: the periodic estimate of empty page tables
/// (`--empty-tables-interval`, `--empty-tables-budget`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmptyTablesSection {
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub budget: Duration,
}

impl Default for EmptyTablesSection {
    fn default() -> Self {
        // See `empty_tables::Settings::default`: at most 0.5 % of a core.
        let settings = crate::empty_tables::Settings::default();
        Self { interval: settings.interval, budget: settings.budget }
    }
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    #[serde(deserialize_with = "value_enum")]
    pub format: LogFormat,
    /// tracing's EnvFilter syntax.
    pub filter: String,
}

impl Default for LogSection {
    fn default() -> Self {
        // Human-readable lines on stderr; start-up facts and warnings only.
        Self { format: LogFormat::Text, filter: "info".to_owned() }
    }
}

/// `[tls]`: both or neither.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

#[expect(clippy::derivable_impls, reason = "written out to say what the default means")]
impl Default for TlsSection {
    fn default() -> Self {
        // Plain HTTP, as node exporters usually are on a trusted network.
        Self { cert: None, key: None }
    }
}

/// `[auth]`: basic (user and password file) or bearer (token file), not both.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    pub basic_user: Option<String>,
    pub basic_password_file: Option<PathBuf>,
    pub bearer_token_file: Option<PathBuf>,
}

#[expect(clippy::derivable_impls, reason = "written out to say what the default means")]
impl Default for AuthSection {
    fn default() -> Self {
        // No authentication.
        Self { basic_user: None, basic_password_file: None, bearer_token_file: None }
    }
}

/// `[http]`: the listener's limits (docs/http.md).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub max_connections: u32,
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    pub max_header_bytes: u32,
    pub max_concurrent_scrapes: u32,
}

impl Default for HttpSection {
    fn default() -> Self {
        // Each default is explained where the limits are defined.
        let limits = HttpLimits::default();
        Self {
            max_connections: limits.max_connections,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            write_timeout: limits.write_timeout,
            max_header_bytes: limits.max_header_bytes,
            max_concurrent_scrapes: limits.max_concurrent_scrapes,
        }
    }
}

/// What the agent runs with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub exited_ttl: Duration,
    pub harvest_interval: Duration,
    pub probe_mode: ProbeMode,
    pub btf: PathBuf,
    /// Which processes get their own series.
    pub selection: Selection,
    /// Entries of the kernel's per-process map.
    pub max_tracked_processes: u32,
    /// How often and how long empty page tables are estimated.
    pub empty_tables: crate::empty_tables::Settings,
    pub log: LogConfig,
    /// Loaded and checked (certificate and key match).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Secrets already read from their files.
    pub auth: Option<Auth>,
    /// Checked; the connection cap is fitted to the open-file limit at bind.
    pub http: HttpLimits,
    /// The file the values came from, for the start-up log line.
    pub config_file: Option<PathBuf>,
    /// Found while resolving, before logging existed; the agent logs them.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

impl LogConfig {
    /// Logging of commands without a config file: flag or env, else default.
    pub fn from_args(args: &LogArgs) -> Result<Self, ConfigError> {
        let defaults = LogSection::default();
        let config = Self {
            format: args.log_format.unwrap_or(defaults.format),
            filter: args.log.clone().unwrap_or(defaults.filter),
        };
        config.check("--log/PTWATCH_LOG")?;
        Ok(config)
    }

    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.filter).map(|_| ()).map_err(|err| ConfigError::LogFilter {
            filter: self.filter.clone(),
            origin: origin.to_owned(),
            message: err.to_string(),
        })
    }
}

impl AgentConfig {
    /// Merge flags/env (`args`, `log`) over the file named by `--config`.
    pub fn resolve(args: &AgentArgs, log: &LogArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let log_origin = if log.log.is_some() {
            "--log/PTWATCH_LOG".to_owned()
        } else if let Some(path) = &args.config {
            format!("[log] filter in {}", path.display())
        } else {
            "the default".to_owned()
        };
        let log = LogConfig {
            format: log.log_format.unwrap_or(file.log.format),
            filter: log.log.clone().unwrap_or(file.log.filter),
        };
        log.check(&log_origin)?;

        let tls_cert = args.tls_cert.clone().or(file.tls.cert);
        let tls_key = args.tls_key.clone().or(file.tls.key);
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(&cert, &key)?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Conflict("a TLS certificate is set but no key (--tls-key, [tls] key)".into()))
            }
            (None, Some(_)) => {
                return Err(ConfigError::Conflict(
                    "a TLS key is set but no certificate (--tls-cert, [tls] cert)".into(),
                ))
            }
        };

        let basic_user = args.basic_auth_user.clone().or(file.auth.basic_user);
        let basic_password = args.basic_auth_password_file.clone().or(file.auth.basic_password_file);
        let bearer = args.bearer_token_file.clone().or(file.auth.bearer_token_file);
        let mut warnings = Vec::new();
        let mut secret = |what, path: &Path| read_secret(what, path, &mut warnings);
        let auth = match (basic_user, basic_password, bearer) {
            (None, None, None) => None,
            (Some(user), Some(password), None) => {
                Some(Auth::Basic { user, password: secret("basic auth password", &password)? })
            }
            (None, None, Some(token)) => Some(Auth::Bearer { token: secret("bearer token", &token)? }),
            (_, _, Some(_)) => {
                return Err(ConfigError::Conflict("basic auth and a bearer token cannot both be configured".into()))
            }
            (Some(_), None, None) | (None, Some(_), None) => {
                return Err(ConfigError::Conflict(
                    "basic auth needs both a user (--basic-auth-user, [auth] basic_user) and a password file (--basic-auth-password-file, [auth] basic_password_file)".into(),
                ))
            }
        };

        let empty_tables = crate::empty_tables::Settings {
            interval: args.empty_tables_interval.unwrap_or(file.empty_tables.interval),
            budget: args.empty_tables_budget.unwrap_or(file.empty_tables.budget),
        };
        if empty_tables.budget >= empty_tables.interval {
            return Err(ConfigError::Conflict(format!(
                "the empty-table budget ({:?}) must be shorter than its interval ({:?}) (--empty-tables-budget, --empty-tables-interval, [empty_tables])",
                empty_tables.budget, empty_tables.interval
            )));
        }
        let http = HttpLimits {
            max_connections: args.http.max_connections.unwrap_or(file.http.max_connections),
            header_timeout: args.http.header_timeout.unwrap_or(file.http.header_timeout),
            idle_timeout: args.http.idle_timeout.unwrap_or(file.http.idle_timeout),
            write_timeout: args.http.write_timeout.unwrap_or(file.http.write_timeout),
            max_header_bytes: args.http.max_header_bytes.unwrap_or(file.http.max_header_bytes),
            max_concurrent_scrapes: args.http.max_concurrent_scrapes.unwrap_or(file.http.max_concurrent_scrapes),
        };
        http.validate()?;

        Ok(Self {
            listen: args.listen.unwrap_or(file.listen),
            exited_ttl: args.exited_ttl.unwrap_or(file.exited_ttl),
            harvest_interval: args.harvest_interval.unwrap_or(file.harvest_interval),
            probe_mode: args.probe_mode.unwrap_or(file.probe_mode),
            btf: args.btf.clone().unwrap_or(file.btf),
            selection: Selection {
                top: args.top_processes.unwrap_or(file.top_processes),
                rank_by: args.rank_processes_by.unwrap_or(file.rank_processes_by),
                min_pagetable_bytes: args.min_process_pagetable_bytes.or(file.min_process_pagetable_bytes),
                min_reclaimed_pages: args.min_process_reclaimed_pages.or(file.min_process_reclaimed_pages),
            },
            max_tracked_processes: args.max_tracked_processes.unwrap_or(file.max_tracked_processes),
            empty_tables,
            log,
            tls,
            auth,
            http,
            config_file: args.config.clone(),
            warnings,
        })
    }
}

/// Read and parse `path`; relative paths inside it are made relative to its
/// directory, so that the file means the same wherever the agent starts.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let mut config =
        parse(&text).map_err(|(position, message)| ConfigError::Parse { path: path.to_owned(), position, message })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let rebase = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    rebase(&mut config.btf);
    for p in [
        &mut config.tls.cert,
        &mut config.tls.key,
        &mut config.auth.basic_password_file,
        &mut config.auth.bearer_token_file,
    ]
    .into_iter()
    .flatten()
    {
        rebase(p);
    }
    Ok(config)
}

/// Parse TOML text; the error is one line with its position.
fn parse(text: &str) -> Result<FileConfig, (Position, String)> {
    toml::from_str(text).map_err(|err: toml::de::Error| {
        let position = err.span().map(|span| line_column(text, span.start));
        // toml's messages can span lines (e.g. a list of expected keys).
        let message = err.message().split_whitespace().collect::<Vec<_>>().join(" ");
        (Position(position), message)
    })
}

/// 1-based line and column of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A secret file's content without its trailing newline (what `echo` and
/// most secret stores add).
fn read_secret(what: &'static str, path: &Path, warnings: &mut Vec<String>) -> Result<Vec<u8>, ConfigError> {
    let mut secret =
        std::fs::read(path).map_err(|source| ConfigError::Secret { what, path: path.to_owned(), source })?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(ConfigError::EmptySecret { what, path: path.to_owned() });
    }
    use std::os::unix::fs::PermissionsExt as _;
    if std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0) {
        warnings.push(format!("{what} file {} is accessible to group or others; chmod 600 it", path.display()));
    }
    Ok(secret)
}

/// Durations as in the flags (`"90s"`, `"5m"`), or an integer of seconds.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"90s\", \"5m\" or \"1h\"")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
            match u64::try_from(seconds) {
                Ok(seconds) if seconds > 0 => Ok(Duration::from_secs(seconds)),
                _ => Err(E::custom(format!("duration {seconds} must be greater than zero"))),
            }
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// Largest `--max-tracked-processes`: Linux's `PID_MAX_LIMIT`, the most
/// processes a system can have.
pub const MAX_TRACKED_PROCESSES_LIMIT: u32 = 4_194_304;

/// `max_tracked_processes`: within 1..=[`MAX_TRACKED_PROCESSES_LIMIT`], as the flag.
fn max_tracked_processes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = i64::deserialize(deserializer)?;
    u32::try_from(value).ok().filter(|v| (1..=MAX_TRACKED_PROCESSES_LIMIT).contains(v)).ok_or_else(|| {
        de::Error::custom(format!("max_tracked_processes {value} must be between 1 and {MAX_TRACKED_PROCESSES_LIMIT}"))
    })
}

/// The same spellings as the flag (clap's `ValueEnum`), so the file and the
/// command line cannot disagree on what `probe_mode = "kprobe"` means.
fn value_enum<'de, D: Deserializer<'de>, T: clap::ValueEnum>(deserializer: D) -> Result<T, D::Error> {
    let text = String::deserialize(deserializer)?;
    T::from_str(&text, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| format!("{:?}", p.get_name())))
            .collect();
        de::Error::custom(format!("invalid value {text:?}: expected one of {}", names.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            r#"
listen = "127.0.0.1:1234"
exited_ttl = "90s"
harvest_interval = 3
probe_mode = "tracepoint"
btf = "/tmp/vmlinux"
top_processes = 7
rank_processes_by = "reclaimed"
min_process_pagetable_bytes = 65536
min_process_reclaimed_pages = 512
max_tracked_processes = 64
[log]
format = "json"
filter = "debug"
[tls]
cert = "/c"
key = "/k"
[auth]
basic_user = "u"
basic_password_file = "/p"
bearer_token_file = "/t"
[empty_tables]
interval = "2m"
budget = "50ms"
[http]
max_connections = 64
header_timeout = "3s"
idle_timeout = 30
write_timeout = "1m"
max_header_bytes = 4096
max_concurrent_scrapes = 2
"#,
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(config.exited_ttl, Duration::from_secs(90));
        assert_eq!(config.harvest_interval, Duration::from_secs(3));
        assert_eq!(config.probe_mode, ProbeMode::Tracepoint);
        assert_eq!(config.top_processes, 7);
        assert_eq!(config.rank_processes_by, RankBy::Reclaimed);
        assert_eq!(config.min_process_pagetable_bytes, Some(65536));
        assert_eq!(config.min_process_reclaimed_pages, Some(512));
        assert_eq!(config.max_tracked_processes, 64);
        assert_eq!(config.log, LogSection { format: LogFormat::Json, filter: "debug".into() });
        assert_eq!(config.tls.key, Some(PathBuf::from("/k")));
        assert_eq!(config.auth.basic_user.as_deref(), Some("u"));
        assert_eq!(config.empty_tables.interval, Duration::from_secs(120));
        assert_eq!(config.empty_tables.budget, Duration::from_millis(50));
        assert_eq!(
            config.http,
            HttpSection {
                max_connections: 64,
                header_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(30),
                write_timeout: Duration::from_secs(60),
                max_header_bytes: 4096,
                max_concurrent_scrapes: 2,
            }
        );
    }

    #[test]
    fn errors_are_one_line_with_a_position() {
        for (text, needle, line) in [
            ("listen = ", "", 1),
            ("lisen = \"1.2.3.4:5\"", "unknown field `lisen`", 1),
            ("\n[log]\nformat = \"xml\"", "invalid value \"xml\": expected one of \"text\", \"json\"", 3),
            ("exited_ttl = \"5x\"", "invalid duration unit", 1),
            ("exited_ttl = 0", "greater than zero", 1),
            ("listen = \"nowhere\"", "invalid socket address", 1),
            ("rank_processes_by = \"rss\"", "expected one of \"pagetable-bytes\", \"reclaimed\"", 1),
            ("top_processes = -1", "invalid value", 1),
            ("max_tracked_processes = 0", "between 1 and 4194304", 1),
            ("max_tracked_processes = 5000000", "between 1 and 4194304", 1),
            ("[tls]\ncrt = \"/c\"", "unknown field `crt`", 2),
            ("[empty_tables]\nbudget = \"1x\"", "invalid duration unit", 2),
            ("[http]\nheader_timeout = \"0s\"", "greater than zero", 2),
            ("[http]\nmax_connections = -1", "invalid value", 2),
            ("[http]\nmax_conections = 1", "unknown field `max_conections`", 2),
        ] {
            let (position, message) = parse(text).unwrap_err();
            assert!(message.contains(needle), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
            assert_eq!(position.0.map(|p| p.0), Some(line), "{text:?}: {message}");
        }
    }

    #[test]
    fn the_empty_table_budget_must_fit_its_interval() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(["ptwatch", "agent", "--empty-tables-budget", "2m"]).unwrap();
        let crate::cli::Command::Agent(args) = cli.command else { panic!("agent command") };
        let err = AgentConfig::resolve(&args, &cli.log).unwrap_err();
        assert!(err.to_string().contains("empty-table budget"), "{err}");
        let cli = crate::cli::Cli::try_parse_from(["ptwatch", "agent", "--empty-tables-interval", "5s"]).unwrap();
        let crate::cli::Command::Agent(args) = cli.command else { panic!("agent command") };
        let config = AgentConfig::resolve(&args, &cli.log).unwrap();
        assert_eq!(config.empty_tables.interval, Duration::from_secs(5));
        assert_eq!(config.empty_tables.budget, crate::empty_tables::Settings::default().budget);
    }

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
