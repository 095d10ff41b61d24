//! `mirage sim`: the paper's staging comparison, on the protocol's own staging core.

use anyhow::{Context, Result};
use mirage_protocol::manifest::{PolicyKind, StageOrder, StagingPolicy};
use mirage_protocol::staging::StagePlan;
use mirage_testnet::sim::overlay::{self, GossipModel, OverlayOutcome, OverlayScenario};
use mirage_testnet::sim::{self, Comparison, Scenario, World, ALL_POLICIES};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Machines in the simulated fleet.
    #[arg(long, default_value_t = 100_000)]
    machines: u32,
    /// Clusters (distinct environments) the machines fall into.
    #[arg(long, default_value_t = 2_000)]
    clusters: u32,
    /// Problems in the first release, each breaking a random subset of clusters.
    #[arg(long, default_value_t = 3)]
    problems: u32,
    /// Share of clusters each problem breaks.
    #[arg(long, default_value_t = 0.05)]
    problem_share: f64,
    /// Share of machines a problem breaks although their cluster's representatives pass
    /// (misplaced by clustering).
    #[arg(long, default_value_t = 0.0)]
    misplaced: f64,
    /// Zipf exponent of cluster sizes (0 = equal sizes).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Random seed: runs with the same seed are identical.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Repeat with this many consecutive seeds and summarize the latency ratios.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// `all`, or one of no-staging, front-loading, balanced.
    #[arg(long, default_value = "all")]
    policy: String,
    /// Balanced: number of stages.
    #[arg(long, default_value_t = 3)]
    stages: u16,
    /// Balanced: how long a stage waits for its gates before the next opens.
    #[arg(long, default_value_t = 3600)]
    stage_timeout_secs: u32,
    /// Put the largest clusters first instead of the smallest.
    #[arg(long)]
    largest_first: bool,
    /// Representatives that test per cluster.
    #[arg(long, default_value_t = 2)]
    representatives: u16,
    /// Passing reports a cluster needs before its members apply.
    #[arg(long, default_value_t = 2)]
    threshold: u16,
    /// How long a representative may take to report before the next in line replaces it.
    #[arg(long, default_value_t = 1800)]
    report_deadline_secs: u32,
    /// Minimum hours the vendor needs to fix a reported problem (plus an exponential tail
    /// of mean --fix-tail-hours).
    #[arg(long, default_value_t = 4.0)]
    fix_hours: f64,
    /// Mean of the exponential tail added to --fix-hours.
    #[arg(long, default_value_t = 2.0)]
    fix_tail_hours: f64,
    /// Observer nodes sampled for the overlay model (bytes per node, state, agreement
    /// on representatives and stages); 0 skips it. Run for the first seed.
    #[arg(long, default_value_t = 500)]
    observers: u32,
    /// Overlay model: share of machines that restart or leave per minute.
    #[arg(long, default_value_t = 0.01)]
    churn_per_min: f64,
    /// Overlay model: share of deliveries lost after gossip's own repair.
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
    /// The release touches one facet of the environment, in this many variants (each
    /// cluster has one; problems follow it): the policies run a second time over the
    /// per-upgrade clusters a release scoped to that facet is staged in, and the
    /// clusters and tests that saves are printed.
    #[arg(long)]
    touched_variants: Option<u32>,
    /// Print one JSON object (every run's figures, and per policy the worst over the
    /// seeds) instead of the tables.
    #[arg(long)]
    json: bool,
}

/// Prints a line of the human-readable report, unless JSON was asked for.
macro_rules! say {
    ($args:expr) => {
        if !$args.json {
            println!();
        }
    };
    ($args:expr, $($t:tt)*) => {
        if !$args.json {
            println!($($t)*);
        }
    };
}

fn policies(choice: &str) -> Result<Vec<PolicyKind>> {
    if choice == "all" {
        return Ok(ALL_POLICIES.to_vec());
    }
    let one: PolicyKind = choice.parse().map_err(anyhow::Error::msg)?;
    // The baseline always runs too: the comparison is against it.
    Ok(if one == PolicyKind::NoStaging { vec![one] } else { vec![PolicyKind::NoStaging, one] })
}

pub fn run(args: Args) -> Result<()> {
    let policies = policies(&args.policy)?;
    let hour = 3_600_000.0;
    let mut scenario = Scenario {
        machines: args.machines,
        clusters: args.clusters,
        zipf_exponent: args.zipf,
        problems: args.problems,
        problem_cluster_share: args.problem_share,
        misplaced_share: args.misplaced,
        touched_variants: args.touched_variants,
        seed: args.seed,
        policy: StagingPolicy {
            kind: PolicyKind::Balanced,
            representatives: args.representatives,
            threshold: args.threshold,
            report_deadline_secs: args.report_deadline_secs,
            stages: args.stages,
            stage_timeout_secs: args.stage_timeout_secs,
            order: if args.largest_first { StageOrder::LargestFirst } else { StageOrder::SmallestFirst },
            ..StagingPolicy::default()
        },
        ..Scenario::default()
    };
    scenario.timing.fix_base_ms = (args.fix_hours * hour) as u64;
    scenario.timing.fix_mean_ms = (args.fix_tail_hours * hour) as u64;

    let started = Instant::now();
    let mut ratios: Vec<(PolicyKind, Vec<f64>)> = policies.iter().map(|p| (*p, Vec::new())).collect();
    let mut runs = Vec::new();
    let mut overlay = None;
    let mut per_upgrade = None;
    for seed in args.seed..args.seed + args.seeds.max(1) {
        scenario.seed = seed;
        let (cmp, o, per) = run_one(&args, scenario.clone(), &policies, overlay.is_none())?;
        overlay = overlay.or(o);
        if per_upgrade.is_none() {
            per_upgrade = per.map(|p| (cmp.clone(), p));
        }
        for (policy, r) in &mut ratios {
            r.extend(cmp.latency_ratio(*policy));
        }
        runs.push((seed, cmp));
    }
    if args.json {
        let mut out = sim_json(&args, &runs, overlay.as_ref(), started.elapsed().as_secs_f64());
        if let Some((full, (clusters, per))) = &per_upgrade {
            out["per_upgrade"] = per_upgrade_json(args.seed, full, *clusters, per);
        }
        println!("{out}");
        return Ok(());
    }
    if args.seeds > 1 {
        println!("worst-case latency vs no-staging over {} seeds (min / mean / max):", args.seeds);
        for (policy, r) in ratios.iter().filter(|(p, _)| *p != PolicyKind::NoStaging) {
            let mean = r.iter().sum::<f64>() / r.len().max(1) as f64;
            let min = r.iter().copied().fold(f64::INFINITY, f64::min);
            let max = r.iter().copied().fold(0.0, f64::max);
            println!("  {:<14} {min:.2}x / {mean:.2}x / {max:.2}x", policy.name());
        }
    }
    Ok(())
}

/// Per policy, the tests and latency over full clusters beside per-upgrade clusters.
fn per_upgrade_json(seed: u64, full: &Comparison, clusters: usize, per: &Comparison) -> serde_json::Value {
    let policies: Vec<serde_json::Value> = per
        .outcomes
        .iter()
        .map(|o| {
            let f = full.outcomes.iter().find(|f| f.policy == o.policy);
            serde_json::json!({
                "policy": o.policy.name(),
                "tests_run": o.tests_run,
                "tests_run_full_clusters": f.map(|f| f.tests_run),
                "installed_faulty": o.installed_faulty,
                "latency_max_ratio": per.latency_ratio(o.policy),
                "latency_max_ratio_full_clusters": full.latency_ratio(o.policy),
            })
        })
        .collect();
    serde_json::json!({ "seed": seed, "clusters": clusters, "policies": policies })
}

type PerUpgrade = (usize, Comparison);

fn run_one(
    args: &Args,
    scenario: Scenario,
    policies: &[PolicyKind],
    with_overlay: bool,
) -> Result<(Comparison, Option<OverlayOutcome>, Option<PerUpgrade>)> {
    let hour = 3_600_000.0;
    let seed = scenario.seed;
    let started = Instant::now();
    let world = World::generate(scenario).context("building the simulated fleet")?;
    let largest = world.members.iter().map(Vec::len).max().unwrap_or(0);
    let smallest = world.members.iter().map(Vec::len).min().unwrap_or(0);
    say!(
        args,
        "fleet: {} machines in {} clusters (sizes {}..{}, zipf {}), seed {}",
        args.machines,
        args.clusters,
        smallest,
        largest,
        args.zipf,
        seed
    );
    say!(
        args,
        "problems: {} in the first release, each breaking {:.0}% of clusters; {} machines in broken clusters",
        args.problems,
        args.problem_share * 100.0,
        world.machines_in_broken_clusters()
    );
    if !world.misplaced.is_empty() {
        say!(args, "misplaced: {} machines broken by a problem their cluster passes", world.misplaced.len());
    }
    let fixes: Vec<String> = world.fix_ms.iter().map(|ms| format!("{:.1} h", *ms as f64 / hour)).collect();
    say!(args, "vendor fix times: [{}]", fixes.join(", "));
    if policies.contains(&PolicyKind::Balanced) {
        // The same plan every node computes from the cluster sizes it knows.
        let sizes = world
            .cluster_keys
            .iter()
            .zip(&world.members)
            .map(|(k, m)| (*k, m.len() as u64))
            .collect::<BTreeMap<_, _>>();
        let plan = StagePlan::new(&world.scenario.policy(PolicyKind::Balanced), &sizes);
        let stages: Vec<String> = plan
            .stages()
            .iter()
            .map(|stage| {
                let machines: u64 = stage.iter().map(|c| sizes[c]).sum();
                format!("{} clusters / {machines} machines", stage.len())
            })
            .collect();
        say!(args, "balanced stages: {}", stages.join("; "));
    }
    say!(args, "fleet generated in {:.2} s", started.elapsed().as_secs_f64());

    // The policies are independent runs over the same fleet: one thread each (each is
    // deterministic on its own), reported in order. The overlay model runs beside them
    // on the same world, so neither core idles while the shorter runs end.
    let overlay_scenario = OverlayScenario {
        observers: args.observers,
        churn_per_min: args.churn_per_min,
        loss: args.loss,
        ..OverlayScenario::default()
    };
    type Timed<T> = (T, f64);
    let (runs, overlay_run): (Vec<Timed<sim::PolicyOutcome>>, Option<Timed<OverlayOutcome>>) =
        std::thread::scope(|scope| {
            let world = &world;
            let overlay_scenario = &overlay_scenario;
            let overlay = (with_overlay && args.observers > 0).then(|| {
                scope.spawn(move || {
                    let t = Instant::now();
                    let policy = world.scenario.policy(PolicyKind::Balanced);
                    let o = overlay::simulate(world, overlay_scenario, &GossipModel::default(), &policy);
                    (o, t.elapsed().as_secs_f64())
                })
            });
            let handles: Vec<_> = policies
                .iter()
                .map(|&policy| {
                    scope.spawn(move || {
                        let t = Instant::now();
                        let o = sim::run(world, policy);
                        (o, t.elapsed().as_secs_f64())
                    })
                })
                .collect();
            let runs = handles.into_iter().map(|h| h.join().expect("a simulation thread panicked")).collect();
            (runs, overlay.map(|h| h.join().expect("the overlay thread panicked")))
        });
    let mut outcomes = Vec::new();
    for (o, secs) in runs {
        say!(args, "{:<14} simulated in {secs:.2} s ({} events)", o.policy.name(), o.events);
        outcomes.push(o);
    }
    let cmp = Comparison { outcomes };
    say!(args);
    if !args.json {
        print!("{cmp}");
    };
    say!(args);
    say!(args, "installed faulty: machines that installed a faulty release; tested faulty: representatives");
    say!(args, "that tested one; hit: either. latency: first release until a machine runs a working release.");
    say!(args);
    let per_upgrade = world.per_upgrade().map(|per| {
        let t = Instant::now();
        let per_cmp = sim::compare(&per, policies);
        say!(
            args,
            "per-upgrade clusters: the release touches one facet in {} variants; staged over {} clusters instead of {} \
             (simulated in {:.2} s):",
            per.members.len(),
            per.members.len(),
            world.members.len(),
            t.elapsed().as_secs_f64()
        );
        if !args.json {
            print!("{per_cmp}");
        }
        for o in per_cmp.outcomes.iter().filter(|o| o.policy != PolicyKind::NoStaging) {
            let full = cmp.outcomes.iter().find(|f| f.policy == o.policy).map_or(0, |f| f.tests_run);
            say!(
                args,
                "  {:<14} tests {} instead of {} ({:.1}x fewer), latency {:.2}x no-staging instead of {:.2}x",
                o.policy.name(),
                o.tests_run,
                full,
                full as f64 / o.tests_run.max(1) as f64,
                per_cmp.latency_ratio(o.policy).unwrap_or(f64::NAN),
                cmp.latency_ratio(o.policy).unwrap_or(f64::NAN)
            );
        }
        say!(args);
        (per.members.len(), per_cmp)
    });
    let Some((out, overlay_secs)) = overlay_run else {
        return Ok((cmp, None, per_upgrade));
    };
    say!(
        args,
        "overlay: {} observers ({} up and settled at the release), {:.0}% of machines churning per minute, simulated in {:.2} s",
        out.observers,
        out.judged,
        args.churn_per_min * 100.0,
        overlay_secs
    );
    say!(
        args,
        "  per node: {:.1} KB/min in, {:.1} KB/min out (worst {:.1} KB/min in), {:.1} messages/min; state {:.2} MB (worst {:.2} MB)",
        out.bytes_in_per_node_per_min / 1000.0,
        out.bytes_out_per_node_per_min / 1000.0,
        out.bytes_in_per_node_per_min_max / 1000.0,
        out.messages_in_per_node_per_min,
        out.state_bytes_per_node / 1e6,
        out.state_bytes_per_node_max as f64 / 1e6
    );
    say!(
        args,
        "  keeping libp2p connections alive (ping, identify) besides: {:.1} KB/min each way; DHT queries {:.1} KB/min each way",
        out.keepalive_bytes_per_node_per_min / 1000.0,
        out.dht_bytes_per_node_per_min / 1000.0
    );
    say!(
        args,
        "  all-to-all announcements instead: {:.1} MB/min in, {:.1} MB of state",
        out.announce_bytes_in_per_node_per_min / 1e6,
        out.announce_state_bytes_per_node / 1e6
    );
    say!(
        args,
        "  agreement with the majority: representatives {:.4}, stages {:.4}; a new node settles in {:.0} s (median), {:.0} s (worst)",
        out.representative_agreement,
        out.stage_agreement,
        out.settle_s_median,
        out.settle_s_max
    );
    Ok((cmp, Some(out), per_upgrade))
}

/// The figures of every run, and per policy the worst over the seeds.
fn sim_json(
    args: &Args,
    runs: &[(u64, Comparison)],
    overlay: Option<&OverlayOutcome>,
    wall_s: f64,
) -> serde_json::Value {
    let figures = |cmp: &Comparison, o: &mirage_testnet::sim::PolicyOutcome| {
        serde_json::json!({
            "policy": o.policy.name(),
            "installed_faulty": o.installed_faulty,
            "tested_faulty": o.tested_faulty,
            "hit_by_faulty": o.hit_by_faulty,
            "tests_run": o.tests_run,
            "releases": o.releases,
            "latency_max_ms": o.latency_max_ms,
            "latency_mean_ms": o.latency_mean_ms,
            "latency_max_ratio": cmp.latency_ratio(o.policy),
            "never_working": o.never_working,
            "events": o.events,
        })
    };
    let per_run: Vec<serde_json::Value> = runs
        .iter()
        .map(|(seed, cmp)| {
            let policies: Vec<serde_json::Value> = cmp.outcomes.iter().map(|o| figures(cmp, o)).collect();
            serde_json::json!({ "seed": seed, "policies": policies })
        })
        .collect();
    let kinds: Vec<PolicyKind> =
        runs.first().map(|(_, cmp)| cmp.outcomes.iter().map(|o| o.policy).collect()).unwrap_or_default();
    let worst: Vec<serde_json::Value> = kinds
        .iter()
        .map(|&kind| {
            let of = |f: fn(&mirage_testnet::sim::PolicyOutcome) -> u64| {
                runs.iter().filter_map(|(_, c)| c.outcomes.iter().find(|o| o.policy == kind)).map(f).max()
            };
            let ratio = runs
                .iter()
                .filter_map(|(_, c)| c.latency_ratio(kind))
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
            serde_json::json!({
                "policy": kind.name(),
                "installed_faulty": of(|o| o.installed_faulty),
                "tested_faulty": of(|o| o.tested_faulty),
                "never_working": of(|o| o.never_working),
                "latency_max_ratio": ratio,
            })
        })
        .collect();
    serde_json::json!({
        "machines": args.machines,
        "clusters": args.clusters,
        "seeds": args.seeds.max(1),
        "wall_s": wall_s,
        "policies": worst,
        "runs": per_run,
        "overlay": overlay.map(|o| serde_json::json!({
            "seed": args.seed,
            "observers": o.observers,
            "judged": o.judged,
            "churn_per_min": args.churn_per_min,
            "loss": args.loss,
            "bytes_in_per_node_per_min": o.bytes_in_per_node_per_min,
            "bytes_out_per_node_per_min": o.bytes_out_per_node_per_min,
            "bytes_in_per_node_per_min_max": o.bytes_in_per_node_per_min_max,
            "messages_in_per_node_per_min": o.messages_in_per_node_per_min,
            "state_bytes_per_node": o.state_bytes_per_node,
            "state_bytes_per_node_max": o.state_bytes_per_node_max,
            "representative_agreement": o.representative_agreement,
            "stage_agreement": o.stage_agreement,
            "settle_s_median": o.settle_s_median,
            "settle_s_max": o.settle_s_max,
            "heartbeat_bytes": o.heartbeat_bytes,
            "summary_bytes": o.summary_bytes,
            "keepalive_bytes_per_node_per_min": o.keepalive_bytes_per_node_per_min,
            "dht_bytes_per_node_per_min": o.dht_bytes_per_node_per_min,
            "announce_bytes_in_per_node_per_min": o.announce_bytes_in_per_node_per_min,
            "announce_state_bytes_per_node": o.announce_state_bytes_per_node,
        })),
    })
}
