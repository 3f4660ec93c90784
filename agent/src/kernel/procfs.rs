//! Small readers of `/proc`, shared by the agent and the CLI.

use std::{fs, io, path::Path};

/// `/proc/<pid>` exists: the process (or a zombie of it) is still there.
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmPTE`.
pub fn status_kib(pid: u32, field: &str) -> io::Result<Option<u64>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(kib_field(&status, field))
}

/// A `Field:   123 kB` line of `/proc/<pid>/status` or `/proc/meminfo`.
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// (major, minor) of the running kernel, from its release (`6.18.44-…`);
/// (0, 0) when unreadable.
pub fn kernel_version() -> (u32, u32) {
    parse_version(&kernel_release())
}

fn parse_version(release: &str) -> (u32, u32) {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// The release string of the running kernel (`uname -r`).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Turn a kernel `comm` buffer into text: up to the first NUL, lossy UTF-8.
pub fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {

    #[test]
    fn versions_from_releases() {
        assert_eq!(parse_version("6.18.44-fc-v595"), (6, 18));
        assert_eq!(parse_version("5.10.0-46-cloud-amd64"), (5, 10));
        assert_eq!(parse_version("7.3.4+deb13-cloud-arm64"), (7, 3));
        assert_eq!(parse_version("unknown"), (0, 0));
    }

    use super::*;

    #[test]
    fn parses_status_fields() {
        let status = "Name:\tcat\nVmPTE:\t      44 kB\nVmSwap:\t0 kB\n";
        assert_eq!(kib_field(status, "VmPTE"), Some(44));
        assert_eq!(kib_field(status, "VmSwap"), Some(0));
        assert_eq!(kib_field(status, "VmRSS"), None);
        // A prefix of another field's name does not match.
        assert_eq!(kib_field(status, "Vm"), None);
    }

    #[test]
    fn own_vmpte_is_readable() {
        let kib = status_kib(std::process::id(), "VmPTE").expect("read own status");
        assert!(kib.is_some_and(|k| k > 0));
    }

    #[test]
    fn comm_conversion_stops_at_nul_and_tolerates_bad_utf8() {
        assert_eq!(comm_to_string(b"bash\0\0\0junk"), "bash");
        assert_eq!(comm_to_string(&[0x66, 0xff, 0x6f]), "f\u{fffd}o");
        assert_eq!(comm_to_string(b"0123456789abcdef"), "0123456789abcdef");
    }
}
