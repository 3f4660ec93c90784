//! `ptwatch check`: what this kernel supports and what the agent will do.

use serde::Serialize;

use crate::{
    cli::CheckArgs,
    export::metrics::exported_families,
    kernel::{btf::KernelBtf, procfs, support},
    probes::{plan::PlanReport, Probes},
};

#[derive(Serialize)]
struct Report {
    kernel: String,
    btf: String,
    pt_reclaim_config: support::ConfigState,
    pt_reclaim_active: bool,
    probe_mode: &'static str,
    reclaim_accounting: crate::probes::ReclaimAccounting,
    plan: PlanReport,
    metrics: Vec<&'static str>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    support::require_privileges()?;
    let btf = KernelBtf::load(&args.probes.btf)?;
    let pt_reclaim_active = support::pt_reclaim_works()?;
    support::ensure_tracefs()?;
    let probes = Probes::load(&btf, args.probes.probe_mode)?;
    let report = Report {
        kernel: procfs::kernel_release(),
        btf: args.probes.btf.display().to_string(),
        pt_reclaim_config: support::pt_reclaim_config(),
        pt_reclaim_active,
        probe_mode: probes.mode().as_str(),
        reclaim_accounting: probes.accounting().clone(),
        plan: probes.plan().clone(),
        metrics: exported_families(probes.plan().pagetable_free.attach.is_some()),
    };
    drop(probes);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn print_text(r: &Report) {
    println!("kernel        {}", r.kernel);
    println!("BTF           {} (struct offsets resolved)", r.btf);
    let config = match r.pt_reclaim_config {
        support::ConfigState::Enabled => "CONFIG_PT_RECLAIM=y",
        support::ConfigState::Disabled => "CONFIG_PT_RECLAIM not set",
        support::ConfigState::Unknown => "kernel config not readable",
    };
    let behaviour = if r.pt_reclaim_active {
        "active: MADV_DONTNEED freed the empty PTE tables of a test region"
    } else {
        "not active: MADV_DONTNEED left the empty PTE tables in place (supported mode: DONTNEED calls and page-table frees are still measured)"
    };
    println!("PT_RECLAIM    {behaviour} ({config})");
    println!("probe mode    {}", r.probe_mode);
    for choice in [&r.plan.pagetable_free, &r.plan.pt_reclaim] {
        let attach = choice.attach.map_or("none", |a| a.as_str());
        println!("event {:<15} {attach}: {}", choice.event, choice.detail);
        for rejected in &choice.rejected {
            println!("    {:<10} not used: {}", rejected.attach.as_str(), rejected.reason);
        }
    }
    println!("reclaim       counted by {}", r.reclaim_accounting.method());
    println!("metrics       {}", r.metrics.join(", "));
}
