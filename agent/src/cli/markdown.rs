//! docs/cli.md: the command-line reference in Markdown, rendered from the
//! clap definitions that parse the flags (the man pages and `--help` come
//! from the same place). `cargo xtask docs` writes it; `agent/tests/docs.rs`
//! fails when the committed file differs from [`render`]'s output.

use std::{collections::BTreeMap, fmt::Write as _};

use clap::{Arg, ArgAction, Command};

use super::generate::documented_commands;

/// The reference for `cli`, a built command (see [`super::generate::command`]).
pub fn render(cli: &Command) -> String {
    let mut out = String::new();
    let commands = documented_commands(cli);
    let subcommands = &commands[1..];
    let _ = writeln!(out, "# Command-line reference\n");
    let _ = writeln!(
        out,
        "<!-- Generated from the clap definitions in agent/src/cli.rs by `cargo xtask docs`; edit those, not this \
         file. agent/tests/docs.rs fails when the two differ. -->\n"
    );
    let _ = writeln!(
        out,
        "The same text as `ptwatch --help`, `ptwatch COMMAND --help` and the man pages (`man ptwatch`, \
         `man ptwatch-agent`, ...), which are generated from the same definitions.\n"
    );
    write_description(&mut out, cli);
    write_usage(&mut out, cli);
    let _ = writeln!(out, "| command | what it does |\n|---|---|");
    for command in subcommands {
        let name = format!("ptwatch {}", command.get_name());
        let _ = writeln!(
            out,
            "| [`{name}`](#{}) | {} |",
            name.replace(' ', "-"),
            cell(command.get_about().map(ToString::to_string).unwrap_or_default().trim_end_matches('.'))
        );
    }
    let _ = writeln!(out);

    let global: Vec<&Arg> = cli.get_arguments().filter(|a| a.is_global_set() && documented(a)).collect();
    let _ = writeln!(out, "## Options of every command\n");
    write_options(&mut out, &global);

    write_environment(&mut out, subcommands);

    for command in subcommands {
        let _ = writeln!(out, "## `ptwatch {}`\n", command.get_name());
        write_description(&mut out, command);
        write_usage(&mut out, command);
        let own: Vec<&Arg> = command.get_arguments().filter(|a| !a.is_global_set() && documented(a)).collect();
        if !own.is_empty() {
            write_options(&mut out, &own);
        }
    }
    // One trailing newline, as editors and `git diff` expect.
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// Options worth a row: not `--help`/`--version`, not hidden.
fn documented(arg: &Arg) -> bool {
    !arg.is_hide_set() && !matches!(arg.get_action(), ArgAction::Help | ArgAction::HelpLong | ArgAction::Version)
}

/// The long help of a command as Markdown: paragraphs of prose joined into
/// one line each; indented paragraphs (column layouts of the verbatim help
/// texts) kept as they are, in a `text` block.
fn write_description(out: &mut String, command: &Command) {
    let text = command.get_long_about().or(command.get_about()).map(ToString::to_string).unwrap_or_default();
    for paragraph in text.split("\n\n").map(|p| p.trim_end()).filter(|p| !p.trim().is_empty()) {
        if paragraph.lines().any(|line| line.starts_with(' ')) {
            let _ = writeln!(out, "```text\n{paragraph}\n```\n");
        } else {
            let joined: Vec<&str> = paragraph.lines().map(str::trim).collect();
            let _ = writeln!(out, "{}\n", escape(&joined.join(" ")));
        }
    }
}

fn write_usage(out: &mut String, command: &Command) {
    let usage = command.clone().render_usage().to_string();
    let _ = writeln!(out, "```text\n{}\n```\n", usage.trim_end());
}

fn write_options(out: &mut String, args: &[&Arg]) {
    let _ = writeln!(out, "| option | variable | default | meaning |\n|---|---|---|---|");
    for arg in args {
        let (mut meaning, stated_default) = split_default(&help(arg));
        // A switch's default (`false`) says nothing.
        let default = takes_values(arg)
            .then(|| {
                arg.get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .reduce(|a, b| format!("{a}, {b}"))
                    .or(stated_default)
            })
            .flatten();
        // clap drops the final period of one-line help texts.
        if !meaning.trim_end().ends_with('.') {
            meaning = format!("{}.", meaning.trim_end());
        }
        if let Some(values) = possible_values(arg) {
            let _ = write!(meaning, " Values: {values}.");
        }
        let default = match default {
            None => "–".to_owned(),
            Some(value) if value.contains(' ') => cell(&value),
            Some(value) => format!("`{value}`"),
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {default} | {} |",
            synopsis(arg),
            arg.get_env().map_or("–".to_owned(), |env| format!("`{}`", env.to_string_lossy())),
            cell(meaning.trim())
        );
    }
    let _ = writeln!(out);
}

/// How an option is written: `--listen <LISTEN>`, `--json`, `[PID]`.
fn synopsis(arg: &Arg) -> String {
    let value = arg
        .get_value_names()
        .map(|names| names.iter().map(|n| format!("<{n}>")).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| format!("<{}>", arg.get_id().as_str().to_uppercase()));
    match arg.get_long() {
        Some(long) if takes_values(arg) => format!("--{long} {value}"),
        Some(long) => format!("--{long}"),
        None if arg.is_required_set() => value,
        None => format!("[{}]", value.trim_start_matches('<').trim_end_matches('>')),
    }
}

fn help(arg: &Arg) -> String {
    let text = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The agent's flags state their default in the help text (`[default: X]`),
/// because the real default applies only after the config file: move it to
/// the default column.
fn split_default(help: &str) -> (String, Option<String>) {
    match help.split_once("[default: ") {
        Some((before, rest)) => {
            let (value, after) = rest.split_once(']').unwrap_or((rest, ""));
            (format!("{}{}", before.trim_end(), after), Some(value.to_owned()))
        }
        None => (help.to_owned(), None),
    }
}

fn takes_values(arg: &Arg) -> bool {
    arg.get_num_args().is_some_and(|n| n.takes_values())
}

/// `auto` (the most precise ...), `fentry`, ... for options with a fixed set.
fn possible_values(arg: &Arg) -> Option<String> {
    if !takes_values(arg) {
        return None;
    }
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| match v.get_help() {
            Some(help) => format!("`{}` ({})", v.get_name(), lower_first(help.to_string().trim_end_matches('.'))),
            None => format!("`{}`", v.get_name()),
        })
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// "The most precise" → "the most precise", but "PTE pages" stays.
fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => {
            first.to_lowercase().chain(text.chars().skip(1)).collect()
        }
        _ => text.to_owned(),
    }
}

/// Every variable, the option it sets and the commands that read it, after
/// the naming rule (which `cli::tests::every_option_has_its_variable`
/// enforces).
fn write_environment(out: &mut String, commands: &[&Command]) {
    let mut variables: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for command in commands {
        for arg in command.get_arguments().filter(|a| documented(a)) {
            if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                let entry = variables
                    .entry(env.to_string_lossy().into_owned())
                    .or_insert_with(|| (format!("--{long}"), Vec::new()));
                entry.1.push(format!("`{}`", command.get_name()));
            }
        }
    }
    let shared: Vec<String> =
        variables.values().filter(|(_, users)| users.len() > 1).map(|(option, _)| format!("`{option}`")).collect();
    let _ = writeln!(out, "## Environment variables\n");
    let _ = writeln!(
        out,
        "Every option can also be set by an environment variable; the flag wins over the variable (and, for \
         `ptwatch agent`, the variable over its config file: [configuration.md](configuration.md)). The name is \
         `PTWATCH_` and the option's name in capitals with `_` for `-` for the options of `ptwatch agent` and \
         those that mean the same in several commands ({}): `--probe-mode` is `PTWATCH_PROBE_MODE`. The other \
         options of a command put its name first, so that one command's variable never changes another: \
         `ptwatch trace --min-pages` is `PTWATCH_TRACE_MIN_PAGES`. An on/off option such as `--json` is on when \
         its variable is `1`, `true`, `yes`, `on`, `y` or `t`, off when it is `0`, `false`, `no`, `off`, `n` or \
         `f`. Positional arguments (the PID of `ptwatch scan`) have no variable.\n",
        shared.join(", ")
    );
    let every = commands.len();
    let _ = writeln!(out, "| variable | option | commands |\n|---|---|---|");
    for (env, (option, users)) in variables {
        let users = if users.len() == every { "every command".to_owned() } else { users.join(", ") };
        let _ = writeln!(out, "| `{env}` | `{option}` | {users} |");
    }
    let _ = writeln!(out);
}

/// Text for a table cell: one line, `|` escaped.
fn cell(text: &str) -> String {
    escape(&text.split_whitespace().collect::<Vec<_>>().join(" ")).replace('|', "\\|")
}

/// `<` and `>` outside code spans would be read as HTML tags.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    for c in text.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_outside_code_only() {
        assert_eq!(escape("/proc/<pid> `a<b` x|y"), "/proc/&lt;pid&gt; `a<b` x|y");
        assert_eq!(cell("a |\n b"), "a \\| b");
    }

    #[test]
    fn defaults_stated_in_help_move_to_their_column() {
        assert_eq!(
            split_default("Address to serve on [default: 0.0.0.0:9977]."),
            ("Address to serve on.".to_owned(), Some("0.0.0.0:9977".to_owned()))
        );
        assert_eq!(split_default("No default."), ("No default.".to_owned(), None));
    }

    #[test]
    fn every_documented_option_is_in_the_reference() {
        let command = super::super::generate::command();
        let text = render(&command);
        for listed in documented_commands(&command) {
            for arg in listed.get_arguments().filter(|a| documented(a)) {
                let row = format!("| `{}` |", synopsis(arg));
                assert!(text.contains(&row), "{row} missing from the reference");
            }
        }
        assert!(!text.contains("ptwatch generate"), "the hidden command is documented");
    }
}
