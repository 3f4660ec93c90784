//! `ptwatch generate`: the man pages, the Markdown reference (docs/cli.md)
//! and shell completions, rendered from the clap definitions that parse the
//! flags, so that none of them can say something `--help` does not.
//!
//! Why an undocumented command of the binary (ripgrep's `--generate` model)
//! rather than an xtask command linking the CLI definition: that definition
//! lives in the agent crate, whose build script compiles the eBPF object, so
//! linking it into xtask would make every `cargo xtask` invocation build the
//! agent (and its eBPF programs, before `cargo xtask setup` has even
//! installed bpf-linker). And a package's man pages then come from the very
//! binary it ships. `cargo xtask docs` and the packaging
//! (`xtask/src/docs.rs`) run the built binary; `agent/tests/docs.rs` calls
//! [`super::markdown::render`] directly.
//!
//! It is parsed on its own, before [`Cli`], rather than as a hidden
//! subcommand: clap_complete puts hidden subcommands in the completion
//! scripts, and the documented interface should be exactly the users' one.

use std::{
    ffi::OsString,
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};

use super::Cli;

/// `ptwatch generate WHAT`.
#[derive(Debug, Parser)]
#[command(name = "ptwatch generate", about = "Render ptwatch's documentation from its command-line definitions")]
pub struct GenerateCli {
    #[command(subcommand)]
    pub what: Generate,
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Write one man page per command into DIR (ptwatch.1, ptwatch-agent.1,
    /// ...) and print their paths.
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
    /// Print the command-line reference (docs/cli.md).
    Markdown,
    /// Print the completion script of a shell.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The whole command-line definition, built: subcommands have their display
/// names (`ptwatch-agent`) and the global flags propagated into them. clap's
/// own `help` command is left out: `--help` is on every page.
pub fn command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

/// The commands users see: `ptwatch` first, then each visible subcommand.
pub fn documented_commands(command: &clap::Command) -> Vec<&clap::Command> {
    std::iter::once(command).chain(command.get_subcommands().filter(|c| !c.is_hide_set())).collect()
}

/// Whether the command line (`argv[0]` first) asks for `ptwatch generate`.
pub fn requested(args: &[OsString]) -> bool {
    args.get(1).is_some_and(|arg| arg == "generate")
}

/// `ptwatch generate ...`, from `args` starting at `generate`.
pub fn main(args: &[OsString]) -> ExitCode {
    let cli = GenerateCli::try_parse_from(args).unwrap_or_else(|err| err.exit());
    match run(cli.what) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ptwatch: error: {}", crate::error_chain::ErrorChain(&*err));
            ExitCode::FAILURE
        }
    }
}

pub fn run(what: Generate) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match what {
        Generate::Man { dir } => {
            for page in man_pages(&dir)? {
                writeln!(stdout, "{}", page.display())?;
            }
        }
        Generate::Markdown => stdout.write_all(super::markdown::render(&command()).as_bytes())?,
        Generate::Completion { shell } => {
            let mut command = command();
            clap_complete::generate(shell, &mut command, "ptwatch", &mut stdout);
        }
    }
    stdout.flush().context("writing to stdout")
}

/// Write `ptwatch.1` and `ptwatch-<command>.1` for each visible command into
/// `dir`; returns their paths.
pub fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = command();
    documented_commands(&command)
        .into_iter()
        .map(|page| {
            // No date in the page: the same binary always writes the same
            // bytes (reproducible packages).
            clap_mangen::Man::new(page.clone())
                .manual("ptwatch manual")
                .generate_to(dir)
                .with_context(|| format!("writing the man page of {} into {}", page.get_name(), dir.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_man_page_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("ptwatch-man-{}", std::process::id()));
        let pages = man_pages(&dir).expect("man pages");
        let names: Vec<String> =
            pages.iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            ["ptwatch.1", "ptwatch-agent.1", "ptwatch-check.1", "ptwatch-scan.1", "ptwatch-trace.1", "ptwatch-top.1"]
        );
        let agent = std::fs::read_to_string(dir.join("ptwatch-agent.1")).expect("read");
        // Options, their variables and the global flags are all on the page.
        for needle in ["listen", "PTWATCH_LISTEN", "PTWATCH_LOG_FORMAT"] {
            assert!(agent.contains(needle), "{needle} not in ptwatch-agent.1:\n{agent}");
        }
        let main = std::fs::read_to_string(dir.join("ptwatch.1")).expect("read");
        assert!(main.contains("ptwatch\\-agent(1)"), "ptwatch.1 names the command pages:\n{main}");
        assert!(!main.contains("generate"), "the generator is not a documented command:\n{main}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn generate_is_parsed_before_the_documented_interface() {
        let args: Vec<OsString> = ["ptwatch", "generate", "man", "/tmp/x"].map(OsString::from).to_vec();
        assert!(requested(&args));
        assert!(!requested(&["ptwatch", "agent"].map(OsString::from)));
        let parsed = GenerateCli::try_parse_from(&args[1..]).expect("parses");
        assert!(matches!(parsed.what, Generate::Man { dir } if dir == Path::new("/tmp/x")));
        assert!(Cli::command().find_subcommand("generate").is_none());
    }

    #[test]
    fn completions_offer_the_documented_commands_only() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "ptwatch", &mut script);
            let script = String::from_utf8(script).expect("UTF-8");
            assert!(script.contains("min-pages") && script.contains("agent"), "{shell}:\n{script}");
            assert!(!script.contains("generate"), "{shell} completes the generator:\n{script}");
        }
    }
}
