//! How an error and its causes are shown to people: on one line, each cause
//! once.
//!
//! ptwatch's own error types follow one rule: a wrapping error either
//! exposes its cause through `source()` and leaves it out of its `Display`,
//! or it prints the cause and does not expose it. `ErrorChain` then walks
//! `source()` and joins the messages with `": "`. Errors of other crates do
//! not all follow the rule (aya's `EbpfError` prints `program error: {0}` and
//! also returns that error as its source), so a cause whose text is already
//! on the line is not repeated.
//!
//! Every place that turns an error into text for a person (the one line
//! `main` prints, log fields, `ptwatch check`'s reasons) goes through here;
//! anyhow's `{:#}` would repeat such a foreign cause.

use std::{error::Error, fmt};

/// `Display`s an error followed by its causes, `error: cause: cause`, each
/// cause once.
pub struct ErrorChain<'a>(pub &'a dyn Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use std::{io, path::PathBuf};

    use super::*;
    use crate::{
        aggregate::cgroup::CgroupError,
        config::ConfigError,
        export::{server::ServerError, tls::TlsError},
        kernel::{btf::BtfError, support::SupportError},
        privileges::PrivilegeError,
        probes::ProbeError,
        scan::{maps::ParseError, process::ScanError},
    };

    /// A foreign error that prints its source and also exposes it, as aya's do.
    #[derive(Debug, thiserror::Error)]
    #[error("program error: {0}")]
    struct Repeats(#[source] io::Error);

    fn io_error() -> io::Error {
        io::Error::from(io::ErrorKind::AddrInUse)
    }

    #[test]
    fn joins_causes_once() {
        let err = ServerError::Bind { addr: "127.0.0.1:1".parse().expect("addr"), source: io_error() };
        assert_eq!(ErrorChain(&err).to_string(), format!("cannot listen on 127.0.0.1:1: {}", io_error()));
        let foreign = Repeats(io_error());
        assert_eq!(ErrorChain(&foreign).to_string(), format!("program error: {}", io_error()));
        let wrapped = anyhow::Error::new(foreign).context("loading");
        assert_eq!(ErrorChain(&*wrapped).to_string(), format!("loading: program error: {}", io_error()));
    }

    /// Every wrapping variant of ptwatch's error types, built once: none may
    /// print the cause it also exposes as its source.
    #[test]
    fn no_error_prints_its_exposed_source() {
        let path = PathBuf::from("/x");
        let errors: Vec<Box<dyn Error>> = vec![
            Box::new(CgroupError::Read { path: path.clone(), source: io_error() }),
            Box::new(PrivilegeError::Capget(io_error())),
            Box::new(PrivilegeError::Read { path: "/x".into(), source: io_error() }),
            Box::new(PrivilegeError::Drop(io_error())),
            Box::new(ProbeError::Load(aya::EbpfError::FileError { path: path.clone(), error: io_error() })),
            Box::new(ServerError::Bind { addr: "127.0.0.1:1".parse().expect("addr"), source: io_error() }),
            Box::new(TlsError::Read { what: "key", path: path.clone(), source: io_error() }),
            Box::new(BtfError::Read { path: path.clone(), source: io_error() }),
            Box::new(SupportError::Tracefs { path: "/sys/kernel/tracing", source: io_error() }),
            Box::new(SupportError::TracefsUnreadable { path: "/x".into(), source: io_error() }),
            Box::new(ScanError::Io { path: "/x".into(), source: io_error() }),
            Box::new(ScanError::Parse { path: "/x".into(), source: ParseError { line_no: 1, line: "?".into() } }),
            Box::new(ConfigError::Read { path: path.clone(), source: io_error() }),
            Box::new(ConfigError::Tls(TlsError::Read { what: "key", path: path.clone(), source: io_error() })),
            Box::new(ConfigError::Secret { what: "token", path, source: io_error() }),
        ];
        for err in errors {
            let source = err.source().unwrap_or_else(|| panic!("{err:?} exposes no source"));
            let (text, cause) = (err.to_string(), source.to_string());
            assert!(!text.contains(&cause), "{err:?} prints its source {cause:?} in {text:?}");
        }
    }

    /// The rule, checked on the source itself so that a new error type
    /// follows it too: `{source}` in an `#[error]` string prints a field that
    /// thiserror exposes as the source (a field named `source` always is),
    /// and `{0}` prints a tuple field marked `#[source]` or `#[from]`.
    #[test]
    fn error_strings_do_not_print_exposed_sources() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut files = vec![root];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).expect("read src").map(|e| e.expect("entry").path()));
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("error_chain.rs") {
                // (This file's tests hold deliberate counter-examples.)
                let text = std::fs::read_to_string(&path).expect("read source");
                offenders
                    .extend(exposed_sources_printed(&text).into_iter().map(|l| format!("{}: {l}", path.display())));
            }
        }
        assert!(offenders.is_empty(), "error strings that repeat their source:\n{}", offenders.join("\n"));
    }

    /// The `#[error(...)]` attributes of `text` that print a source they
    /// also expose. An attribute may span lines; the field it describes
    /// follows it.
    fn exposed_sources_printed(text: &str) -> Vec<String> {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut found = Vec::new();
        let mut index = 0;
        while index < lines.len() {
            if !lines[index].starts_with("#[error(") {
                index += 1;
                continue;
            }
            let mut attribute = lines[index].to_owned();
            while !attribute.ends_with(")]") && index + 1 < lines.len() {
                index += 1;
                attribute.push_str(lines[index]);
            }
            let next = lines.get(index + 1).copied().unwrap_or_default();
            let prints_tuple_field = attribute.contains("{0}") || attribute.contains("{0:");
            let tuple_source = prints_tuple_field && (next.contains("#[source]") || next.contains("#[from]"));
            if attribute.contains("{source}") || attribute.contains("{source:") || tuple_source {
                found.push(attribute);
            }
            index += 1;
        }
        found
    }

    #[test]
    fn the_source_check_can_fail() {
        let bad = "#[error(\"cannot listen on {addr}: {source}\")]\nBind {\n\
                   #[error(\"loading failed: {0}\")]\nLoad(#[source] aya::EbpfError),\n\
                   #[error(\"{0}\")]\nTls(#[from] tls::TlsError),\n\
                   #[error(\n\"a long one: {source}\"\n)]\nLong {\n";
        assert_eq!(exposed_sources_printed(bad).len(), 4);
        let good = "#[error(\"cannot listen on {addr}\")]\n#[error(transparent)]\nTls(#[from] TlsError),\n\
                    #[error(\"no struct {0}\")]\nNoStruct(String),\n";
        assert_eq!(exposed_sources_printed(good), Vec::<String>::new());
    }
}
