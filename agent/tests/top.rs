//! `ptwatch top` through the real binary: plain snapshots when stdout is a
//! pipe, and the interactive screen through a real pseudo-terminal (keys,
//! refreshes, quitting with `q` or SIGTERM, the terminal restored).

mod support;

use std::{
    io::Read as _,
    os::fd::{FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use support::{assert_one_line_error, expect_pt_reclaim, ptwatch_bin, workload_bin, Held};

fn top(args: &[&str]) -> std::process::Output {
    Command::new(ptwatch_bin()).arg("top").args(args).output().expect("run ptwatch top")
}

/// The plain snapshots: each as (title, column names, rows of cells). A
/// snapshot is a title, a node line, a blank line, the tab-separated header
/// and rows, and a blank line; cells are split on tabs only, so names with
/// spaces (any process on the machine may have one) cannot shift columns.
fn tables(stdout: &str) -> Vec<(String, Vec<String>, Vec<Vec<String>>)> {
    let mut tables = Vec::new();
    let mut lines = stdout.lines().peekable();
    while let Some(title) = lines.next() {
        assert!(title.starts_with("ptwatch top "), "a snapshot starts with its title: {title:?}\n{stdout}");
        let node = lines.next().expect("node line");
        assert!(node.starts_with("node PageTables "), "{node:?}");
        assert_eq!(lines.next(), Some(""), "blank line after the node line");
        let header: Vec<String> = lines.next().expect("header").split('\t').map(str::to_owned).collect();
        let mut rows = Vec::new();
        for line in lines.by_ref() {
            if line.is_empty() {
                break;
            }
            let cells: Vec<String> = line.split('\t').map(str::to_owned).collect();
            assert_eq!(cells.len(), header.len(), "every row has every column: {line:?}");
            rows.push(cells);
        }
        tables.push((title.to_owned(), header, rows));
    }
    tables
}

/// `PT` as printed, for `kib` KiB.
fn printed_kib(kib: u64) -> String {
    if kib < 1024 {
        format!("{kib} KiB")
    } else if kib.is_multiple_of(1024) {
        format!("{} MiB", kib / 1024)
    } else {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    }
}

/// The JSON snapshots of `top --json`.
fn snapshots(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}"))).collect()
}

#[test]
fn piped_stdout_gets_tab_separated_snapshots() {
    let held = Held::start(16);
    let output = top(&["--interval", "500ms", "--iterations", "3", "--limit", "100000"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains('\x1b'), "no escape sequences in plain mode");
    let tables = tables(&stdout);
    assert_eq!(tables.len(), 3, "one table per refresh:\n{stdout}");
    let pid = held.report.pid.to_string();
    for (title, header, rows) in &tables {
        assert!(title.contains("sorted by page tables"), "{title}");
        assert_eq!(header, &["PID", "COMM", "PT", "RECL/s", "DN/s", "DN-B/s"]);
        let row = rows.iter().find(|r| r[0] == pid).unwrap_or_else(|| panic!("workload {pid} not in\n{stdout}"));
        assert_eq!(row[1], "ptwatch-workloa");
        // PT is the workload's VmPTE, which does not move while it holds.
        assert_eq!(row[2], printed_kib(held.report.vmpte_end_kib), "{row:?}");
    }
}

#[test]
fn a_name_with_spaces_and_tabs_stays_in_its_column() {
    // A workload whose name has a space and a tab, through a symlink.
    let dir = std::env::temp_dir().join(format!("ptwatch-top-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let link = dir.join("a b\tc");
    std::os::unix::fs::symlink(workload_bin(), &link).expect("symlink");
    let held = Held::spawn({
        let mut command = Command::new(&link);
        command.args(["hold", "8"]);
        command
    });
    let output = top(&["--interval", "300ms", "--iterations", "1", "--limit", "100000"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pid = held.report.pid.to_string();
    let (_, _, rows) = &tables(&stdout)[0];
    let row = rows.iter().find(|r| r[0] == pid).unwrap_or_else(|| panic!("workload {pid} not in\n{stdout}"));
    assert_eq!(row[1], "a b\\tc", "the tab is escaped, the space kept");
    let json = top(&["--json", "--interval", "300ms", "--iterations", "1", "--limit", "100000"]);
    let snapshot = &snapshots(&String::from_utf8_lossy(&json.stdout))[0];
    let rows = snapshot["rows"].as_array().expect("rows");
    let row = rows.iter().find(|r| r["pid"].as_u64() == Some(u64::from(held.report.pid))).expect("the workload");
    assert_eq!(row["comm"], "a b\tc", "JSON carries the name as it is");
}

#[test]
fn json_snapshots_are_sorted_and_carry_raw_values() {
    let held = Held::start(16);
    let output = top(&["--json", "--interval", "400ms", "--iterations", "2", "--limit", "100000"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let snapshots = snapshots(&stdout);
    assert_eq!(snapshots.len(), 2, "{stdout}");
    for snapshot in &snapshots {
        assert_eq!((snapshot["type"].as_str(), snapshot["view"].as_str()), (Some("snapshot"), Some("processes")));
        assert_eq!(snapshot["sort"], "pagetable");
        assert!(snapshot["node_pagetable_bytes"].as_u64().is_some_and(|b| b > 0), "{snapshot}");
        let rows = snapshot["rows"].as_array().expect("rows");
        let row = rows
            .iter()
            .find(|r| r["pid"].as_u64() == Some(u64::from(held.report.pid)))
            .unwrap_or_else(|| panic!("the workload in {snapshot}"));
        assert_eq!(row["pagetable_bytes"].as_u64(), Some(held.report.vmpte_end_kib * 1024));
        // Largest first (an exited process has no page tables left: 0).
        let sizes: Vec<u64> = rows.iter().map(|r| r["pagetable_bytes"].as_u64().unwrap_or(0)).collect();
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "sorted by PT: {sizes:?}");
    }
}

#[test]
fn rates_come_from_the_probes() {
    // Keep reclaiming for a few seconds in a fresh process while top samples.
    let mut workload = Command::new(workload_bin())
        // Far more rounds than top needs: it is killed once top is done.
        .args(["cuts", "64", "0", "2048", "100000", "dontneed"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("workload");
    let pid = u64::from(workload.id());
    let output = top(&["--json", "--interval", "1s", "--iterations", "2", "--limit", "100000", "--sort", "reclaim"]);
    let _ = workload.kill();
    let _ = workload.wait();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let snapshots = snapshots(&String::from_utf8_lossy(&output.stdout));
    assert!(snapshots.iter().all(|s| s["sort"] == "reclaim"));
    let rows: Vec<&serde_json::Value> = snapshots
        .iter()
        .flat_map(|s| s["rows"].as_array().expect("rows"))
        .filter(|r| r["pid"].as_u64() == Some(pid))
        .collect();
    assert!(!rows.is_empty(), "workload {pid} not shown: {snapshots:?}");
    let max = |key: &str| rows.iter().map(|r| r[key].as_f64().unwrap_or(0.0)).fold(0.0f64, f64::max);
    assert!(max("dontneed_calls_per_second") > 0.0, "DONTNEED rate of a busy workload: {rows:?}");
    if expect_pt_reclaim() {
        assert!(max("reclaim_pages_per_second") > 0.0, "reclaim rate of a busy workload: {rows:?}");
    }
    // Sorted by reclaim rate, largest first.
    for snapshot in &snapshots {
        let rates: Vec<f64> = snapshot["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["reclaim_pages_per_second"].as_f64().unwrap_or(0.0))
            .collect();
        assert!(rates.windows(2).all(|w| w[0] >= w[1]), "{rates:?}");
    }
}

#[test]
fn cgroup_view_lists_the_workloads_cgroup() {
    let held = Held::start(8);
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", held.report.pid)).expect("cgroup");
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 path").to_owned();
    let output = top(&["--cgroups", "--iterations", "1", "--interval", "200ms", "--limit", "100000"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tables = tables(&stdout);
    let (_, header, rows) = &tables[0];
    assert_eq!(header, &["CGROUP", "PROCS", "PT", "VmPTE-SUM", "RECL/s", "DN/s", "DN-B/s"]);
    assert!(rows.iter().any(|r| r[0] == path), "{path} in\n{stdout}");
}

/// A pseudo-terminal: the child gets the slave as stdin, stdout and stderr.
struct Pty {
    master: std::fs::File,
    slave: OwnedFd,
}

impl Pty {
    fn open(rows: u16, cols: u16) -> Self {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: valid out-pointers and winsize; no name buffer or termios.
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two new descriptors we now own.
        unsafe { Self { master: std::fs::File::from_raw_fd(master), slave: OwnedFd::from_raw_fd(slave) } }
    }

    fn lflag(&self) -> libc::tcflag_t {
        use std::os::fd::AsRawFd as _;
        // SAFETY: an all-zero termios is valid; tcgetattr fills it.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and termios.
        assert_eq!(unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut termios) }, 0);
        termios.c_lflag
    }
}

/// `ptwatch top` on a pseudo-terminal, with everything it writes collected.
struct Screen {
    child: std::process::Child,
    pty: Pty,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Screen {
    fn start(args: &[&str]) -> Self {
        let pty = Pty::open(1000, 200);
        let stdio = || Stdio::from(pty.slave.try_clone().expect("dup pty"));
        let child = Command::new(ptwatch_bin())
            .arg("top")
            .args(args)
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio())
            .spawn()
            .expect("spawn ptwatch top on a pty");
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&output);
        let mut master = pty.master.try_clone().expect("dup master");
        std::thread::spawn(move || {
            let mut buffer = [0u8; 65536];
            // Ends with EIO once every slave descriptor is closed.
            while let Ok(n) = master.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").extend_from_slice(&buffer[..n]);
            }
        });
        Self { child, pty, output }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("lock")).into_owned()
    }

    /// Wait up to 30 s until `check` holds for the output.
    fn wait_for(&mut self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if check(&self.text()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("top exited ({status}) before {what}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no {what} within 30 s:\n{}", self.text());
    }

    fn press(&mut self, key: &[u8]) {
        use std::io::Write as _;
        self.pty.master.write_all(key).expect("type a key");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the reader catch the last bytes.
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(Instant::now() < deadline, "top did not exit:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Leave the alternate screen and show the cursor, after the last frame.
fn assert_restored(text: &str, pty: &Pty, lflag_before: libc::tcflag_t) {
    let last_frame = text.rfind("ptwatch top ").expect("a frame");
    let leave = text.rfind("\x1b[?1049l").expect("left the alternate screen");
    let show = text.rfind("\x1b[?25h").expect("cursor shown again");
    assert!(leave > last_frame && show > last_frame, "restored after the last frame");
    let lflag = pty.lflag();
    assert_eq!(lflag & (libc::ICANON | libc::ECHO), lflag_before & (libc::ICANON | libc::ECHO), "cooked mode back");
}

#[test]
fn the_screen_refreshes_sorts_on_keys_and_quits_with_q() {
    let held = Held::start(8);
    let pid = held.report.pid.to_string();
    let mut screen = Screen::start(&["--interval", "500ms"]);
    let lflag_before = libc::ICANON | libc::ECHO;
    screen.wait_for("the alternate screen", |t| t.contains("\x1b[?1049h"));
    // Raw mode while it runs.
    assert_eq!(screen.pty.lflag() & (libc::ICANON | libc::ECHO), 0, "raw mode while top runs");
    let row = format!("\n{pid} ");
    let pid_shown = move |t: &str| t.replace('\r', "").contains(&row);
    screen.wait_for("the workload's pid", &pid_shown);
    let frames = screen.text().matches("ptwatch top ").count();
    screen.wait_for("a refresh", |t| t.matches("ptwatch top ").count() >= frames + 2);
    screen.press(b"r");
    screen.wait_for("the reclaim sort", |t| t.contains("sorted by reclaim"));
    screen.press(b"c");
    screen.wait_for("the cgroup view", |t| t.contains("CGROUP"));
    screen.press(b"q");
    let status = screen.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", screen.text());
    assert_restored(&screen.text(), &screen.pty, lflag_before);
}

#[test]
fn sigterm_and_iterations_restore_the_terminal_too() {
    let mut screen = Screen::start(&["--interval", "300ms"]);
    screen.wait_for("a frame", |t| t.contains("ptwatch top "));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(screen.child.id() as i32, libc::SIGTERM) };
    let status = screen.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", screen.text());
    assert_restored(&screen.text(), &screen.pty, libc::ICANON | libc::ECHO);

    let mut screen = Screen::start(&["--interval", "300ms", "--iterations", "2"]);
    let status = screen.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", screen.text());
    assert_eq!(screen.text().matches("ptwatch top ").count(), 2, "two refreshes");
    assert_restored(&screen.text(), &screen.pty, libc::ICANON | libc::ECHO);
}

#[test]
fn bad_flags_are_one_line_and_exit_2() {
    assert_one_line_error(&top(&["--sort", "nope"]), 2, "nope");
    assert_one_line_error(&top(&["--interval", "0s"]), 2, "greater than zero");
    assert_one_line_error(&top(&["--interval", "fast"]), 2, "fast");
    assert_one_line_error(&top(&["--iterations", "0"]), 2, "--iterations");
    assert_one_line_error(&top(&["--limit", "x"]), 2, "--limit");
}

#[test]
fn help_explains_the_numbers() {
    let output = top(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "VmPTE",
        "memory.stat",
        "PT_RECLAIM",
        "RECL/s",
        "DN/s",
        "--sort",
        "--interval",
        "q",
        "Exit code",
        "--json",
        "tab",
    ] {
        assert!(help.contains(needle), "{needle:?} not in top --help");
    }
}
