//! PyPI tools the tests run, in a virtual environment of their own outside
//! the system Python (Debian marks it externally managed).
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::step;
use crate::cmd;

/// Where the tools live; the tests run them from here
/// (agent/tests/deploy_*.rs name the same path).
pub const PYTHON_VENV: &str = "/opt/ptwatch-dev/venv";

/// Install those of `tools` (pinned `name==version`) that are missing into
/// [`PYTHON_VENV`], through the venv's own pip.
pub fn install(tools: &[&str]) -> Result<()> {
    let venv = Path::new(PYTHON_VENV);
    let python = venv.join("bin/python3");
    let installed = |tool: &str| {
        let (name, version) = tool.split_once("==").unwrap_or((tool, ""));
        cmd::stdout(Command::new(&python).args(["-m", "pip", "show", name]))
            .is_ok_and(|info| info.lines().any(|line| line == format!("Version: {version}")))
    };
    if python.exists() && tools.iter().all(|tool| installed(tool)) {
        step(&format!("Python tools {} in {PYTHON_VENV}: present", tools.join(" ")));
        return Ok(());
    }
    step(&format!("Python tools {}: missing, installing into {PYTHON_VENV} with pip", tools.join(" ")));
    if !python.exists() {
        cmd::run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(venv))
            .with_context(|| format!("creating the virtual environment {PYTHON_VENV} failed (package python3-venv)"))?;
    }
    cmd::run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(tools))
        .with_context(|| format!("pip install {} failed: check network access to PyPI", tools.join(" ")))
}
