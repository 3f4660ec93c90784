//! The Grafana dashboard against Grafana's own kinds: JSON Schemas generated
//! from PyPI grafana-foundation-sdk's models (deploy/grafana/schemas,
//! regenerated here and compared, so the committed files are exactly what
//! the pinned package gives), checked by deploy/grafana/validate_dashboard.py
//! for the dashboard and for each panel's options and custom field config.
//! Every query of the dashboard is run against a real Prometheus by
//! deploy_e2e.rs; no Grafana server can run here.

mod deploy_common;

use std::process::{Command, Output};

use deploy_common::{deploy_dir, run, temp_dir, text, venv_tool};
use serde_json::{json, Value};

fn validate(dashboard: &Value) -> Output {
    let dir = temp_dir("grafana-validate");
    let path = dir.join("dashboard.json");
    std::fs::write(&path, dashboard.to_string()).expect("write the dashboard");
    let output = run(
        Command::new(venv_tool("python3")).arg(deploy_dir().join("grafana/validate_dashboard.py")).arg(&path),
        "validate_dashboard.py",
    );
    let _ = std::fs::remove_dir_all(dir);
    output
}

/// A change that makes the dashboard invalid, and what it breaks.
type Mutation = (&'static str, Box<dyn Fn(&mut Value)>);

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy_dir().join("grafana/ptwatch-dashboard.json")).expect("dashboard");
    serde_json::from_str(&text).expect("dashboard JSON")
}

#[test]
fn dashboard_is_valid_against_grafanas_kinds() {
    let output = validate(&dashboard());
    println!("{}", text(&output));
    assert!(output.status.success(), "the dashboard does not match Grafana's kinds:\n{}", text(&output));
}

/// Each kind of mistake the schemas exist to catch is caught.
#[test]
fn validation_rejects_unknown_keys_wrong_types_and_bad_enums() {
    let original = dashboard();
    let first_of = |kind: &str| {
        original["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .position(|p| p["type"] == kind)
            .expect("a panel of that type")
    };
    let (timeseries, table) = (first_of("timeseries"), first_of("table"));
    let mutations: Vec<Mutation> = vec![
        ("unknown dashboard key", Box::new(|d| d["refreshInterval"] = json!("30s"))),
        ("wrong type", Box::new(|d| d["editable"] = json!("yes"))),
        ("unknown panel key", Box::new(move |d| d["panels"][timeseries]["gridPosition"] = json!({}))),
        ("unknown option", Box::new(move |d| d["panels"][timeseries]["options"]["legnd"] = json!({}))),
        (
            "bad enum in field config",
            Box::new(move |d| {
                d["panels"][timeseries]["fieldConfig"]["defaults"]["custom"]["drawStyle"] = json!("dots")
            }),
        ),
        ("table option of the wrong type", Box::new(move |d| d["panels"][table]["options"]["showHeader"] = json!(1))),
        ("unknown variable key", Box::new(|d| d["templating"]["list"][0]["querry"] = json!("x"))),
    ];
    for (what, mutate) in mutations {
        let mut broken = original.clone();
        mutate(&mut broken);
        let output = validate(&broken);
        assert!(!output.status.success(), "{what}: accepted");
    }
}

#[test]
fn vendored_schemas_are_what_the_pinned_package_generates() {
    let dir = temp_dir("grafana-schemas");
    let schemas = deploy_dir().join("grafana/schemas");
    let output = run(
        Command::new(venv_tool("python3")).arg(schemas.join("generate.py")).arg(&dir),
        "generate.py (PyPI grafana-foundation-sdk; `cargo xtask setup --for test` installs it)",
    );
    assert!(output.status.success(), "generate.py failed:\n{}", text(&output));
    let mut generated: Vec<String> = std::fs::read_dir(&dir)
        .expect("generated")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    generated.sort();
    assert!(generated.contains(&"dashboard.schema.json".to_owned()), "{generated:?}");
    for name in &generated {
        let fresh = std::fs::read_to_string(dir.join(name)).expect("generated schema");
        let vendored = std::fs::read_to_string(schemas.join(name))
            .unwrap_or_else(|_| panic!("{name} is generated but not in deploy/grafana/schemas"));
        assert!(fresh == vendored, "deploy/grafana/schemas/{name} differs from what generate.py writes now: rerun it");
    }
    let vendored = std::fs::read_dir(&schemas)
        .expect("schemas")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".schema.json"))
        .count();
    assert_eq!(vendored, generated.len(), "a vendored schema that generate.py no longer writes");
    let _ = std::fs::remove_dir_all(dir);
}
