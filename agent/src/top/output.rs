//! How one refresh of `ptwatch top` is written: aligned columns on the
//! screen, tab-separated columns when stdout is not a terminal (a name may
//! contain spaces, so only a tab can separate columns for scripts), or one
//! JSON object with `--json`.
//!
//! In the tab-separated form, names are escaped so that a row is always one
//! line of the same number of fields: `\` as `\\`, a tab as `\t`, a newline
//! as `\n`, other control characters as `\xNN`.

use std::{fmt::Write as _, time::Duration};

use serde_json::json;

use super::{
    sample::{Row, Sample},
    ViewState,
};
use crate::{
    cli::TopSort,
    trace::record::{human_bytes, local_time, shorten},
};

/// How a snapshot is written when stdout is not the interactive screen
/// (which [`screen_lines`] draws).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Tab-separated columns, then a blank line.
    Plain,
    /// One JSON object per line.
    Json,
}

fn sort_name(sort: TopSort) -> (&'static str, &'static str) {
    match sort {
        TopSort::Pagetable => ("page tables", "pagetable"),
        TopSort::Reclaim => ("reclaim", "reclaim"),
        TopSort::Dontneed => ("DONTNEED", "dontneed"),
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
}

/// The title and node lines of the screen and of plain snapshots.
fn heading(sample: &Sample, state: ViewState, interval: Duration) -> [String; 2] {
    [
        format!(
            "ptwatch top  {}  every {:.1}s  sorted by {}  [p r d: sort  c: {}  q: quit]",
            &local_time(now_ns())[..8],
            interval.as_secs_f64(),
            sort_name(state.sort).0,
            if state.cgroups { "processes" } else { "cgroups" }
        ),
        format!(
            "node PageTables {}   rates over the last {:.1}s",
            sample.node_pagetable_bytes.map_or_else(|| "-".to_owned(), human_bytes),
            sample.seconds
        ),
    ]
}

/// The header and cells of a row, as text (names unescaped).
fn cells(row: &Row, cgroups: bool) -> Vec<String> {
    let pt = row.pagetable_bytes.map_or_else(|| "-".to_owned(), human_bytes);
    let rates = [
        format!("{:.1}", row.reclaim_pages_per_s),
        format!("{:.1}", row.dontneed_calls_per_s),
        human_bytes(row.dontneed_bytes_per_s as u64),
    ];
    let mut cells = if cgroups {
        vec![row.name.clone(), row.processes.to_string(), pt, human_bytes(row.processes_pagetable_bytes)]
    } else {
        vec![row.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()), row.name.clone(), pt]
    };
    cells.extend(rates);
    cells
}

const PROCESS_HEADER: [&str; 6] = ["PID", "COMM", "PT", "RECL/s", "DN/s", "DN-B/s"];
const CGROUP_HEADER: [&str; 7] = ["CGROUP", "PROCS", "PT", "VmPTE-SUM", "RECL/s", "DN/s", "DN-B/s"];

/// The screen's lines: title, node line, blank line, column headers and at
/// most `limit` rows, in aligned columns.
pub fn screen_lines(sample: &Sample, state: ViewState, rows: &[Row], limit: u64, interval: Duration) -> Vec<String> {
    let [title, node] = heading(sample, state, interval);
    let mut lines = vec![title, node, String::new()];
    let align = |cells: &[String]| -> String {
        if state.cgroups {
            format!(
                "{:<40} {:>6} {:>10} {:>10} {:>9} {:>9} {:>11}",
                shorten(&cells[0], 40),
                cells[1],
                cells[2],
                cells[3],
                cells[4],
                cells[5],
                cells[6]
            )
        } else {
            format!(
                "{:<8} {:<16} {:>10} {:>9} {:>9} {:>11}",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
            )
        }
    };
    let header: Vec<String> =
        if state.cgroups { &CGROUP_HEADER[..] } else { &PROCESS_HEADER[..] }.iter().map(|h| (*h).to_owned()).collect();
    lines.push(align(&header));
    for row in rows.iter().take(usize::try_from(limit).unwrap_or(usize::MAX)) {
        lines.push(align(&cells(row, state.cgroups)));
    }
    lines
}

/// One snapshot as text, newline-terminated.
pub fn render(
    layout: Layout,
    sample: &Sample,
    state: ViewState,
    rows: &[Row],
    limit: u64,
    interval: Duration,
) -> Result<String, serde_json::Error> {
    let shown = &rows[..rows.len().min(usize::try_from(limit).unwrap_or(usize::MAX))];
    match layout {
        Layout::Plain => Ok(plain(sample, state, shown, interval)),
        Layout::Json => Ok(serde_json::to_string(&snapshot_json(sample, state, shown, interval))? + "\n"),
    }
}

fn plain(sample: &Sample, state: ViewState, rows: &[Row], interval: Duration) -> String {
    let [title, node] = heading(sample, state, interval);
    let mut out = format!("{title}\n{node}\n\n");
    let header: &[&str] = if state.cgroups { &CGROUP_HEADER } else { &PROCESS_HEADER };
    out.push_str(&header.join("\t"));
    out.push('\n');
    let name_column = usize::from(!state.cgroups);
    for row in rows {
        let mut cells = cells(row, state.cgroups);
        cells[name_column] = escape(&cells[name_column]);
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    out.push('\n');
    out
}

/// A name made safe for one tab-separated field.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\t' => out.push_str(r"\t"),
            '\n' => out.push_str(r"\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

fn snapshot_json(sample: &Sample, state: ViewState, rows: &[Row], interval: Duration) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let rates = (row.reclaim_pages_per_s, row.dontneed_calls_per_s, row.dontneed_bytes_per_s);
            if state.cgroups {
                json!({
                    "cgroup": row.name,
                    "processes": row.processes,
                    "pagetable_bytes": row.pagetable_bytes,
                    "processes_pagetable_bytes": row.processes_pagetable_bytes,
                    "reclaim_pages_per_second": rates.0,
                    "dontneed_calls_per_second": rates.1,
                    "dontneed_bytes_per_second": rates.2,
                })
            } else {
                json!({
                    "pid": row.pid,
                    "comm": row.name,
                    "pagetable_bytes": row.pagetable_bytes,
                    "reclaim_pages_per_second": rates.0,
                    "dontneed_calls_per_second": rates.1,
                    "dontneed_bytes_per_second": rates.2,
                })
            }
        })
        .collect();
    json!({
        "type": "snapshot",
        "timestamp_ns": now_ns(),
        "interval_seconds": interval.as_secs_f64(),
        "rate_seconds": sample.seconds,
        "sort": sort_name(state.sort).1,
        "view": if state.cgroups { "cgroups" } else { "processes" },
        "node_pagetable_bytes": sample.node_pagetable_bytes,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    fn row(pid: u32, name: &str, pt: Option<u64>) -> Row {
        Row {
            pid: Some(pid),
            processes: 1,
            name: name.into(),
            pagetable_bytes: pt,
            processes_pagetable_bytes: pt.unwrap_or(0),
            reclaim_pages_per_s: 2.5,
            dontneed_calls_per_s: 1.0,
            dontneed_bytes_per_s: 4096.0,
        }
    }

    fn sample() -> Sample {
        Sample { processes: Vec::new(), node_pagetable_bytes: Some(5 << 20), seconds: 1.0 }
    }

    const PROCESSES: ViewState = ViewState { sort: TopSort::Reclaim, cgroups: false };

    #[test]
    fn plain_rows_are_tab_separated_whatever_the_name() {
        let rows = [row(1, "a b\tc\\d\ne\x07", Some(8192)), row(2, "plain", None)];
        let text = render(Layout::Plain, &sample(), PROCESSES, &rows, 10, Duration::from_secs(1)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ptwatch top ") && lines[0].contains("sorted by reclaim"), "{text}");
        assert_eq!(lines[1], "node PageTables 5 MiB   rates over the last 1.0s");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "PID\tCOMM\tPT\tRECL/s\tDN/s\tDN-B/s");
        assert_eq!(lines[4], "1\ta b\\tc\\\\d\\ne\\x07\t8 KiB\t2.5\t1.0\t4 KiB");
        assert_eq!(lines[5], "2\tplain\t-\t2.5\t1.0\t4 KiB");
        assert_eq!(lines[6], "", "then a blank line: {text:?}");
        assert_eq!(lines.len(), 7, "{text:?}");
        assert!(text.ends_with("\n\n"));
    }

    #[test]
    fn limit_applies_to_every_layout() {
        let rows = [row(1, "a", Some(1)), row(2, "b", Some(1)), row(3, "c", Some(1))];
        let plain = render(Layout::Plain, &sample(), PROCESSES, &rows, 2, Duration::from_secs(1)).unwrap();
        assert_eq!(plain.lines().filter(|l| l.contains('\t')).count(), 3, "header and 2 rows");
        let json = render(Layout::Json, &sample(), PROCESSES, &rows, 2, Duration::from_secs(1)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["rows"].as_array().map(Vec::len), Some(2));
        assert_eq!(screen_lines(&sample(), PROCESSES, &rows, 2, Duration::from_secs(1)).len(), 6);
    }

    #[test]
    fn json_snapshots_carry_raw_values() {
        let rows = [row(7, "a b", Some(8192))];
        let json = render(Layout::Json, &sample(), PROCESSES, &rows, 10, Duration::from_millis(500)).unwrap();
        assert!(json.ends_with('\n') && json.lines().count() == 1);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["type"], "snapshot");
        assert_eq!(value["sort"], "reclaim");
        assert_eq!(value["view"], "processes");
        assert_eq!(value["interval_seconds"], 0.5);
        assert_eq!(value["node_pagetable_bytes"], 5 << 20);
        let row = &value["rows"][0];
        assert_eq!((row["pid"].as_u64(), row["comm"].as_str()), (Some(7), Some("a b")));
        assert_eq!(row["pagetable_bytes"], 8192);
        assert_eq!(row["reclaim_pages_per_second"], 2.5);
        let cgroups = ViewState { sort: TopSort::Pagetable, cgroups: true };
        let json = render(Layout::Json, &sample(), cgroups, &rows, 10, Duration::from_secs(1)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((value["view"].as_str(), value["rows"][0]["cgroup"].as_str()), (Some("cgroups"), Some("a b")));
    }
}
