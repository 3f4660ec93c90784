//! Bad input: one clear line on stderr, a non-zero exit, never a panic, and
//! each cause said once (`assert_one_line_error` checks that too).

mod support;

use std::process::{Command, Output};

use support::{assert_each_cause_once, assert_one_line_error, free_port, ptwatch_bin};

fn ptwatch(args: &[&str]) -> Output {
    Command::new(ptwatch_bin()).args(args).output().expect("run ptwatch")
}

fn ptwatch_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(ptwatch_bin()).args(args).envs(env.iter().copied()).output().expect("run ptwatch")
}

/// The check catches the repeated causes this project once printed.
#[test]
fn repeated_causes_are_caught() {
    for line in [
        "ptwatch: error: cannot listen on 127.0.0.1:19994: Address already in use (os error 98): Address already in use (os error 98)",
        "ptwatch: error: cannot parse BTF from /etc/passwd: Invalid BTF magic: 0x6f72: Invalid BTF magic: 0x6f72",
        "ptwatch: error: cannot read tracefs at /x (Permission denied (os error 13)): Permission denied (os error 13)",
    ] {
        let caught = std::panic::catch_unwind(|| assert_each_cause_once(line));
        assert!(caught.is_err(), "not caught: {line}");
    }
    assert_each_cause_once("ptwatch: error: cannot listen on 127.0.0.1:1: Address already in use (os error 98)");
}

#[test]
fn file_errors_say_their_cause_once() {
    let port = free_port().to_string();
    assert_one_line_error(
        &ptwatch(&["agent", "--listen", &port, "--btf", "/etc/passwd"]),
        1,
        "cannot parse BTF from /etc/passwd",
    );
    assert_one_line_error(
        &ptwatch(&["agent", "--config", "/nonexistent/ptwatch.toml"]),
        2,
        "No such file or directory",
    );
    assert_one_line_error(
        &ptwatch(&["agent", "--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"]),
        2,
        "cannot read TLS certificate /nonexistent/c.pem: No such file or directory",
    );
    assert_one_line_error(&ptwatch(&["scan", "999999999"]), 1, "999999999");
}

/// Variables are parsed like their flags, and a bad one is named by its flag.
#[test]
fn bad_variables_are_usage_errors() {
    assert_one_line_error(&ptwatch_with_env(&["top"], &[("PTWATCH_TOP_INTERVAL", "5x")]), 2, "--interval");
    assert_one_line_error(&ptwatch_with_env(&["trace"], &[("PTWATCH_TRACE_CAUSE", "reclaim,bogus")]), 2, "--cause");
    assert_one_line_error(&ptwatch_with_env(&["scan", "1"], &[("PTWATCH_SCAN_JSON", "maybe")]), 2, "--json");
}

#[test]
fn bad_flags_are_usage_errors() {
    assert_one_line_error(&ptwatch(&["agent", "--listen", "not-an-address"]), 2, "--listen");
    assert_one_line_error(&ptwatch(&["agent", "--exited-ttl", "5x"]), 2, "duration");
    assert_one_line_error(&ptwatch(&["agent", "--no-such-flag"]), 2, "--no-such-flag");
    assert_one_line_error(&ptwatch(&["no-such-command"]), 2, "no-such-command");
    assert_one_line_error(&ptwatch(&["--log", "=[", "agent"]), 2, "--log");
}

#[test]
fn no_capabilities_is_one_line() {
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(ptwatch_bin())
        .args(["agent", "--listen", &free_port().to_string()])
        .output()
        .expect("setpriv (util-linux)");
    // The capabilities are named (agent/tests/privileges.rs covers each one).
    assert_one_line_error(&output, 1, "missing capability CAP_PERFMON,CAP_BPF");
}

#[test]
fn missing_btf_is_one_line() {
    let output = ptwatch(&["agent", "--listen", &free_port().to_string(), "--btf", "/nonexistent/vmlinux"]);
    assert_one_line_error(&output, 1, "CONFIG_DEBUG_INFO_BTF");
}

#[test]
fn port_in_use_is_one_line() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    assert_one_line_error(&ptwatch(&["agent", "--listen", &addr]), 1, "in use");
}

#[test]
fn sigterm_detaches_every_program() {
    let agent = support::AgentProcess::start(&[]).wait_ready();
    let programs = support::bpf_ids_held(agent.child.id(), "prog_id");
    assert!(programs.len() >= 2, "the ready agent holds its programs: {programs:?}");
    assert_eq!(support::programs_still_loaded(&programs).len(), programs.len(), "loaded while it runs");
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    // No program of that agent is left in the kernel (the kernel frees a
    // program after its last descriptor closes, possibly an RCU period later).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !support::programs_still_loaded(&programs).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(support::programs_still_loaded(&programs), Vec::<u64>::new(), "programs left behind");
}
