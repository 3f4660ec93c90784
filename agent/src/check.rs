//! `ptwatch check`: what this kernel supports and what the agent will do:
//! for each plan, every function or tracepoint it would attach, whether the
//! kernel has it, what the plan costs bystanders, and why it was or was not
//! used.

use serde::Serialize;

use crate::{
    cli::CheckArgs,
    export::metrics::exported_families,
    kernel::{btf::KernelBtf, procfs, support},
    probes::{
        plan::{Need, Outcome, PlanReport, PlanResult, Role},
        Probes, ReclaimAccounting,
    },
};

#[derive(Serialize)]
struct Report {
    kernel: String,
    btf: String,
    pt_reclaim_config: support::ConfigState,
    pt_reclaim_active: bool,
    probe_mode: &'static str,
    reclaim_accounting: ReclaimAccounting,
    causes: Vec<&'static str>,
    plan: PlanReport,
    metrics: Vec<&'static str>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    support::require_privileges()?;
    let btf = KernelBtf::load(&args.probes.btf)?;
    let probes = Probes::load(btf, args.probes.probe_mode)?;
    let plan = probes.plan().clone();
    let report = Report {
        kernel: procfs::kernel_release(),
        btf: args.probes.btf.display().to_string(),
        pt_reclaim_config: support::pt_reclaim_config(),
        pt_reclaim_active: probes.pt_reclaim_active(),
        probe_mode: probes.mode().as_str(),
        reclaim_accounting: probes.accounting().clone(),
        causes: plan.cause_names(),
        metrics: exported_families(plan.frees_observed()),
        plan,
    };
    drop(probes);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(())
}

fn text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let config = match r.pt_reclaim_config {
        support::ConfigState::Enabled => "CONFIG_PT_RECLAIM=y",
        support::ConfigState::Disabled => "CONFIG_PT_RECLAIM not set",
        support::ConfigState::Unknown => "kernel config not readable",
    };
    let behaviour = if r.pt_reclaim_active {
        "active: MADV_DONTNEED freed the empty PTE tables of a test region"
    } else {
        "not active: MADV_DONTNEED left the empty PTE tables in place (supported mode: DONTNEED requests and page-table frees are still measured)"
    };
    let chosen = r.plan.chosen();
    let _ = writeln!(out, "kernel        {}", r.kernel);
    let _ = writeln!(out, "BTF           {} (struct offsets resolved)", r.btf);
    let _ = writeln!(out, "PT_RECLAIM    {behaviour} ({config})");
    let _ = writeln!(out, "probe plan    {}", r.probe_mode);
    let _ = writeln!(out, "  cost        {}", chosen.bystander_cost.describe());
    let _ = writeln!(out, "  reclaim     counted by {}", r.reclaim_accounting.method());
    if let Some(walk) = &r.plan.walk {
        let _ = writeln!(out, "  walk        {walk}");
    }
    let events: Vec<&str> = r.plan.events().into_iter().filter(|(_, a)| a.is_some()).map(|(e, _)| e.as_str()).collect();
    let _ = writeln!(out, "  sees        {}", events.join(", "));
    if !r.causes.is_empty() {
        let _ = writeln!(out, "  causes      {}", r.causes.join(", "));
    }
    for limitation in &chosen.check.limitations {
        let _ = writeln!(out, "  misses      {limitation}");
    }
    for plan in &r.plan.plans {
        out.push('\n');
        out.push_str(&plan_text(plan));
    }
    let _ = writeln!(out, "\nmetrics       {}", r.metrics.join(", "));
    out
}

fn plan_text(plan: &PlanResult) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let outcome = match &plan.outcome {
        Outcome::Chosen => "chosen".to_owned(),
        Outcome::Failed(reason) => format!("not used: loading or attaching failed: {reason}"),
        Outcome::Unusable(reason) => format!("not usable: {reason}"),
        Outcome::NotTried => "not tried: an earlier plan is used".to_owned(),
        Outcome::Excluded => "not tried: excluded by --probe-mode".to_owned(),
    };
    let _ = writeln!(out, "plan {:<10} {outcome}", plan.check.attach.as_str());
    let _ = writeln!(out, "  cost        {}", plan.bystander_cost.describe());
    for point in &plan.check.points {
        let name = if point.at_return { format!("{} (return)", point.name) } else { point.name.clone() };
        let need = match point.need {
            Need::Required => "required",
            Need::Optional => "optional",
            Need::Unused => "unused",
        };
        let found = if point.found { "found" } else { "MISSING" };
        let _ = writeln!(
            out,
            "  {name:<40} {found:<8} in {:<9} {need:<9} {}",
            point.registry.as_str(),
            role_text(point.role)
        );
    }
    for limitation in &plan.check.limitations {
        let _ = writeln!(out, "  misses      {limitation}");
    }
    out
}

fn role_text(role: Role) -> &'static str {
    match role {
        Role::DontneedRequests => "DONTNEED requests (calls, bytes, reclaim context)",
        Role::ProcessMadvise => "process_madvise(2) DONTNEED requests (6.15+)",
        Role::IoUring => "io_uring DONTNEED requests",
        Role::UnmapContext => "tells unmap frees from the rest",
        Role::FreeCounting => "counts page-table frees",
        Role::LevelNaming => "names the level of a free",
        Role::Collapse => "collapse frees (6.5+)",
        Role::Thp => "frees of tables deposited with anonymous THPs",
    }
}
