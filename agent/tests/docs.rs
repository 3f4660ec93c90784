//! The documentation checked against the code, so that it cannot drift:
//! docs/cli.md is what the clap definitions render, docs/configuration.md
//! lists exactly the agent's options, and the Markdown tables these checks
//! read are parsed by one parser (docs/metrics.md's, for the metrics
//! reference check, too).

mod support;

use std::{collections::BTreeMap, path::PathBuf};

use ptwatch::{
    cli::{generate, markdown},
    export::families::{Kind, Plans, FAMILIES},
};

fn repo_file(relative: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    (path, text)
}

/// The first line where `actual` and `expected` differ, for the message.
fn first_difference(actual: &str, expected: &str) -> String {
    let (mut a, mut e) = (actual.lines(), expected.lines());
    for number in 1.. {
        match (a.next(), e.next()) {
            (Some(x), Some(y)) if x == y => continue,
            (None, None) => return "only in line endings".into(),
            (x, y) => return format!("line {number}:\n  committed: {x:?}\n  generated: {y:?}"),
        }
    }
    unreachable!()
}

#[test]
fn cli_reference_is_current() {
    let (path, committed) = repo_file("docs/cli.md");
    let generated = markdown::render(&generate::command());
    assert!(
        committed == generated,
        "docs/cli.md ({}) is stale: run `cargo xtask docs` and commit the result (first difference at {})",
        path.display(),
        first_difference(&committed, &generated)
    );
}

/// `cargo xtask docs` writes what the binary prints: the same text.
#[test]
fn the_binary_renders_the_same_reference() {
    let output = std::process::Command::new(support::ptwatch_bin())
        .args(["generate", "markdown"])
        .output()
        .expect("run ptwatch generate markdown");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), markdown::render(&generate::command()));
}

/// The variables docs/cli.md lists reach the commands: `ptwatch scan` with
/// `PTWATCH_SCAN_ALL=1`, `PTWATCH_SCAN_TOP=1` and `PTWATCH_SCAN_JSON=1` and
/// no flag scans every process and prints one as JSON; without them it wants
/// a PID (exit 2).
#[test]
fn variables_set_their_options() {
    let scan = |env: &[(&str, &str)]| {
        std::process::Command::new(support::ptwatch_bin())
            .arg("scan")
            .envs(env.iter().copied())
            .output()
            .expect("run ptwatch scan")
    };
    let output = scan(&[("PTWATCH_SCAN_ALL", "1"), ("PTWATCH_SCAN_TOP", "1"), ("PTWATCH_SCAN_JSON", "yes")]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: not JSON:\n{json}"));
    let listed = report["processes"].as_array().map_or(0, Vec::len);
    let scanned = report["scanned"].as_u64().unwrap_or_default();
    assert!(scanned > 1 && listed == 1, "PTWATCH_SCAN_TOP=1: {listed} of {scanned} scanned processes listed");
    assert_eq!(scan(&[]).status.code(), Some(2), "without the variables, scan wants a PID");
}

/// docs/configuration.md's option table has one row per option of
/// `ptwatch agent` (and the global ones), with its variable and, where the
/// help states one, its default.
#[test]
fn configuration_lists_every_agent_option() {
    let (path, text) = repo_file("docs/configuration.md");
    let table = tables(&text)
        .into_iter()
        .find(|t| t.header.first().map(String::as_str) == Some("flag"))
        .unwrap_or_else(|| panic!("{}: no table with a `flag` column", path.display()));
    let mut documented: BTreeMap<String, Row> = BTreeMap::new();
    for row in table.rows {
        let flag = first_code_span(&row["flag"]).unwrap_or_else(|| panic!("flag cell {:?}", row["flag"]));
        let long = flag.split_whitespace().next().unwrap_or_default().to_owned();
        documented.insert(long, row);
    }
    let command = generate::command();
    let agent = command.find_subcommand("agent").expect("agent command");
    let mut problems = Vec::new();
    for arg in agent.get_arguments() {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else { continue };
        let flag = format!("--{long}");
        let Some(row) = documented.remove(&flag) else {
            problems.push(format!("{flag} is not in the table"));
            continue;
        };
        let env = env.to_string_lossy();
        if first_code_span(&row["variable"]).as_deref() != Some(&*env) {
            problems.push(format!("{flag}: variable {:?}, the code says {env}", row["variable"]));
        }
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let stated = help.split_once("[default: ").and_then(|(_, rest)| rest.split_once(']')).map(|(v, _)| v);
        if let Some(stated) = stated {
            if first_code_span(&row["default"]).as_deref() != Some(stated) {
                problems.push(format!("{flag}: default {:?}, the code says {stated}", row["default"]));
            }
        }
    }
    problems.extend(documented.keys().map(|flag| format!("{flag} is documented but `ptwatch agent` has no such flag")));
    assert!(problems.is_empty(), "{} disagrees with the code:\n{}", path.display(), problems.join("\n"));
}

// --- Markdown tables ---------------------------------------------------------

type Row = BTreeMap<String, String>;

/// A GitHub-flavoured Markdown table: its header cells and its rows, keyed by
/// header.
#[derive(Debug)]
struct Table {
    header: Vec<String>,
    rows: Vec<Row>,
}

/// Every table of a Markdown text, outside fenced code blocks.
fn tables(markdown: &str) -> Vec<Table> {
    let mut found = Vec::new();
    let mut in_fence = false;
    let lines: Vec<&str> = markdown.lines().collect();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index].trim();
        if line.starts_with("```") {
            in_fence = !in_fence;
        }
        let is_separator =
            |l: &str| l.trim().starts_with("|-") || l.trim().starts_with("| -") || l.trim().starts_with("|:");
        if !in_fence && line.starts_with('|') && lines.get(index + 1).is_some_and(|next| is_separator(next)) {
            let header = cells(line);
            let mut rows = Vec::new();
            index += 2;
            while index < lines.len() && lines[index].trim().starts_with('|') {
                let values = cells(lines[index]);
                rows.push(
                    header.iter().cloned().zip(values.into_iter().chain(std::iter::repeat(String::new()))).collect(),
                );
                index += 1;
            }
            found.push(Table { header, rows });
            continue;
        }
        index += 1;
    }
    found
}

/// The cells of one table line: split on `|` except escaped `\|` and `|`
/// inside code spans, trimmed.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_code = false;
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                current.push('|');
                chars.next();
            }
            '`' => {
                in_code = !in_code;
                current.push(c);
            }
            '|' if !in_code => out.push(std::mem::take(&mut current).trim().to_owned()),
            _ => current.push(c),
        }
    }
    out.push(current.trim().to_owned());
    out
}

/// The text of the first `code span` of a cell.
fn first_code_span(cell: &str) -> Option<String> {
    let (_, rest) = cell.split_once('`')?;
    rest.split_once('`').map(|(code, _)| code.to_owned())
}

/// All code spans of a cell, e.g. the labels `pid`, `comm`.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// A metric family as docs/metrics.md's reference table describes it.
#[derive(Debug, PartialEq)]
struct DocumentedFamily {
    name: String,
    /// `counter`, `gauge`, `histogram` (words after the type, such as
    /// "(always 1)", dropped).
    kind: String,
    unit: String,
    labels: Vec<String>,
    meaning: String,
}

/// The families of docs/metrics.md: the rows of its tables whose first
/// column is `metric`.
fn documented_families(markdown: &str) -> Vec<DocumentedFamily> {
    tables(markdown)
        .into_iter()
        .filter(|t| t.header.first().map(String::as_str) == Some("metric"))
        .flat_map(|t| t.rows)
        .map(|row| DocumentedFamily {
            name: first_code_span(&row["metric"]).unwrap_or_else(|| panic!("metric cell {:?}", row["metric"])),
            kind: row["type"].split_whitespace().next().unwrap_or_default().to_owned(),
            unit: row["unit"].clone(),
            labels: code_spans(&row["labels"]),
            meaning: row["meaning"].clone(),
        })
        .collect()
}

#[test]
fn table_parser_reads_cells_rows_and_skips_code_blocks() {
    let text = "intro\n\n| a | b |\n|---|---|\n| `x\\|y` | `p`, `q` |\n| 1 \\| 2 | |\n\n```text\n| c | d |\n|---|---|\n| in | fence |\n```\n";
    let found = tables(text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].header, ["a", "b"]);
    assert_eq!(found[0].rows.len(), 2);
    assert_eq!(found[0].rows[0]["a"], "`x|y`");
    assert_eq!(code_spans(&found[0].rows[0]["b"]), ["p", "q"]);
    assert_eq!(found[0].rows[1]["a"], "1 | 2");
    assert_eq!(found[0].rows[1]["b"], "");
}

#[test]
fn metrics_reference_parser_reads_every_column() {
    let text = "| metric | type | unit | labels | meaning |\n|---|---|---|---|---|\n\
                | `ptwatch_x_total` | counter | pages | `pid`, `comm` | What x counts. |\n\
                | `ptwatch_build_info` | gauge (always 1) | – | `version` | Build. |\n\
                | `ptwatch_node_y_bytes` | gauge | bytes | – | Node. |\n";
    let families = documented_families(text);
    assert_eq!(families.len(), 3);
    assert_eq!(
        families[0],
        DocumentedFamily {
            name: "ptwatch_x_total".into(),
            kind: "counter".into(),
            unit: "pages".into(),
            labels: vec!["pid".into(), "comm".into()],
            meaning: "What x counts.".into(),
        }
    );
    assert_eq!(families[1].kind, "gauge");
    assert_eq!(families[2].labels, Vec::<String>::new());
}

/// The parser on the real file: every row is a family with a type, and each
/// name appears once.
#[test]
fn metrics_reference_parses() {
    let (path, text) = repo_file("docs/metrics.md");
    let families = documented_families(&text);
    assert!(families.len() >= 20, "{}: only {} families parsed", path.display(), families.len());
    let mut seen = std::collections::HashSet::new();
    for family in &families {
        assert!(["counter", "gauge", "histogram"].contains(&family.kind.as_str()), "{family:?}");
        assert!(seen.insert(family.name.clone()), "{} is documented twice", family.name);
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    }
}

/// docs/metrics.md and the agent's family table describe the same
/// families, in both directions: name, type, unit and labels, and a family
/// only some plans export says which.
#[test]
fn metrics_reference_matches_the_family_table() {
    let (path, text) = repo_file("docs/metrics.md");
    let documented = documented_families(&text);
    let mut problems = Vec::new();
    for family in FAMILIES {
        let Some(doc) = documented.iter().find(|d| d.name == family.name) else {
            problems.push(format!("{}: exported, not documented", family.name));
            continue;
        };
        if doc.kind != kind_name(family.kind) {
            problems.push(format!("{}: documented as a {}, is a {}", family.name, doc.kind, kind_name(family.kind)));
        }
        // `–` in the table: a value without a unit (info gauges).
        let unit = if family.unit.is_empty() { "–" } else { family.unit };
        if doc.unit != unit {
            problems.push(format!("{}: unit documented as {:?}, is {:?}", family.name, doc.unit, unit));
        }
        if doc.labels != family.labels {
            problems.push(format!("{}: labels documented as {:?}, are {:?}", family.name, doc.labels, family.labels));
        }
        if family.plans == Plans::FreeProbes && !doc.meaning.contains("fentry") {
            problems.push(format!("{}: only the fentry and kprobe plans export it; the docs must say so", family.name));
        }
    }
    for doc in &documented {
        if !FAMILIES.iter().any(|f| f.name == doc.name) {
            problems.push(format!("{}: documented, but the agent has no such family", doc.name));
        }
    }
    assert!(
        problems.is_empty(),
        "{} disagrees with agent/src/export/families.rs:\n{}",
        path.display(),
        problems.join("\n")
    );
}

/// What a running agent serves is the family table: every family in the
/// scrape is in it (so documented, by the test above), and every family
/// this plan exports is in the scrape, but for the two that need
/// `kernel.bpf_stats_enabled=1` (a setting of the whole machine) and, on
/// hosts without the cgroup v2 memory controller, the cgroups' page-table
/// memory.
#[test]
fn a_scrape_serves_exactly_the_family_table() {
    let agent = support::AgentProcess::start(&[
        "--empty-tables-interval",
        "1s",
        "--empty-tables-budget",
        "200ms",
        "--harvest-interval",
        "200ms",
    ]);
    let mut conditional = vec!["ptwatch_bpf_program_runs_total", "ptwatch_bpf_program_run_seconds_total"];
    // A live process of a cgroup of its own that DONTNEEDed, so that
    // process and cgroup series exist (the root cgroup has no memory.stat).
    let cgroup = support::TestCgroup::create("docs");
    let held = support::Held::spawn(cgroup.command(&support::workload_bin(), &["hold", "8"]));
    // A cgroup's page-table memory comes from its memory.stat: only where
    // the v2 tree has the memory controller (not on hybrid v1 hosts).
    let memory_controller = cgroup.dir.join("memory.stat").exists();
    if !memory_controller {
        conditional.push("ptwatch_cgroup_pagetable_bytes");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // The empty-table families appear after the first estimation pass, the
    // cgroup ones once the process' cgroup is resolved (at a harvest).
    let text = loop {
        let text = agent.scrape();
        let complete = text.contains("ptwatch_node_empty_pagetable_bytes")
            && text.contains("ptwatch_cgroup_madvise_dontneed_calls_total")
            && (!memory_controller || text.contains("ptwatch_cgroup_pagetable_bytes"));
        if complete || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let served: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let frees_probed = text.lines().any(|l| l.starts_with("ptwatch_probe_attached{event=\"pagetable_free\"} 1"));
    let mut problems = Vec::new();
    for name in &served {
        if !FAMILIES.iter().any(|f| f.name == *name) {
            problems.push(format!("{name}: served, not in the family table"));
        }
    }
    for family in FAMILIES.iter().filter(|f| f.exported_with(frees_probed)) {
        if !served.contains(family.name) && !conditional.contains(&family.name) {
            problems.push(format!("{}: in the family table, not served", family.name));
        }
    }
    assert!(problems.is_empty(), "{}\n(frees probed: {frees_probed})\n{text}", problems.join("\n"));
    drop(held);
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
}
