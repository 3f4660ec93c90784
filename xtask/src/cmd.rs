//! Running child processes so that every failure names the command that
//! failed and, when the program itself is missing, says so in those words.
use std::{
    io,
    process::{Command, Output},
};

use anyhow::{bail, Context as _, Result};

/// `program arg arg`, for messages.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn_error(cmd: &Command, err: io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::NotFound {
        anyhow::anyhow!("`{}` not found on PATH (needed for `{}`)", cmd.get_program().to_string_lossy(), display(cmd))
    } else {
        anyhow::Error::new(err).context(format!("starting `{}`", display(cmd)))
    }
}

/// Run with inherited stdio; fail unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|err| spawn_error(cmd, err))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Run with captured output, whatever the exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().map_err(|err| spawn_error(cmd, err))
}

/// Run with captured output; fail unless it exits 0, quoting its stderr.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            stderr.trim().lines().last().unwrap_or("no error output")
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}
