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

/// The rows of plain snapshots: each table as (title, column header, rows).
fn tables(stdout: &str) -> Vec<(String, String, Vec<Vec<String>>)> {
    stdout
        .split("\n\n\n")
        .flat_map(|chunk| chunk.split("ptwatch top ").skip(1).map(|t| format!("ptwatch top {t}")).collect::<Vec<_>>())
        .map(|table| {
            let lines: Vec<&str> = table.lines().collect();
            let header = lines.iter().find(|l| l.starts_with("PID ") || l.starts_with("CGROUP ")).expect("header");
            let start = lines.iter().position(|l| l == header).expect("header") + 1;
            let rows = lines[start..]
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let mut tokens: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
                    // PID COMM PT(2) RECL/s DN/s DN-B/s(2): a comm may contain
                    // spaces, so it is everything between the pid and the last 6.
                    if header.starts_with("PID ") && tokens.len() > 8 {
                        let comm = tokens[1..tokens.len() - 6].join(" ");
                        tokens.splice(1..tokens.len() - 6, [comm]);
                    }
                    tokens
                })
                .collect();
            (lines[0].to_owned(), (*header).to_owned(), rows)
        })
        .collect()
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

#[test]
fn piped_stdout_gets_plain_snapshots() {
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
        assert!(header.contains("PT") && header.contains("RECL/s") && header.contains("DN/s"), "{header}");
        let row = rows.iter().find(|r| r[0] == pid).unwrap_or_else(|| panic!("workload {pid} not in\n{stdout}"));
        assert_eq!(row[1], "ptwatch-workloa");
        // PT is the workload's VmPTE, which does not move while it holds.
        assert_eq!(format!("{} {}", row[2], row[3]), printed_kib(held.report.vmpte_end_kib), "{row:?}");
        // Largest first.
        let sizes: Vec<f64> = rows
            .iter()
            .map(|r| {
                let value: f64 = r[2].parse().expect("size");
                value
                    * match r[3].as_str() {
                        "B" => 1.0,
                        "KiB" => 1024.0,
                        "MiB" => 1048576.0,
                        _ => 1073741824.0,
                    }
            })
            .collect();
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
    let pid = workload.id().to_string();
    let output = top(&["--interval", "1s", "--iterations", "2", "--limit", "100000", "--sort", "reclaim"]);
    let _ = workload.kill();
    let _ = workload.wait();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tables = tables(&stdout);
    assert!(tables.iter().all(|(title, ..)| title.contains("sorted by reclaim")));
    let rows: Vec<&Vec<String>> = tables.iter().flat_map(|(_, _, rows)| rows).filter(|r| r[0] == pid).collect();
    assert!(!rows.is_empty(), "workload {pid} not shown:\n{stdout}");
    // PID COMM PT(2 tokens) RECL/s DN/s DN-B/s(2 tokens)
    let busiest = rows.iter().map(|r| (r[4].parse::<f64>().unwrap_or(0.0), r[5].parse::<f64>().unwrap_or(0.0)));
    let (reclaim, calls) = busiest.fold((0.0f64, 0.0f64), |(a, b), (r, c)| (a.max(r), b.max(c)));
    assert!(calls > 0.0, "DONTNEED rate of a busy workload: {rows:?}");
    if expect_pt_reclaim() {
        assert!(reclaim > 0.0, "reclaim rate of a busy workload: {rows:?}");
    }
    // Sorted by RECL/s, largest first.
    for (_, _, rows) in &tables {
        let rates: Vec<f64> = rows.iter().map(|r| r[r.len() - 4].parse().unwrap_or(0.0)).collect();
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
    assert!(header.starts_with("CGROUP") && header.contains("VmPTE-SUM"), "{header}");
    assert!(rows.iter().any(|r| r[0] == path || path.ends_with(r[0].trim_start_matches('…'))), "{path} in\n{stdout}");
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
    for needle in ["VmPTE", "memory.stat", "PT_RECLAIM", "RECL/s", "DN/s", "--sort", "--interval", "q", "Exit code"] {
        assert!(help.contains(needle), "{needle:?} not in top --help");
    }
}
