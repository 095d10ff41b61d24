//! Whole-simulation tests at small scale (fast in debug builds).

use super::*;
use crate::sim::overlay;
use mirage_protocol::manifest::PolicyKind;
use mirage_protocol::presence::Presence;

fn small(seed: u64) -> Scenario {
    Scenario { machines: 1_500, clusters: 60, problems: 3, problem_cluster_share: 0.1, seed, ..Scenario::default() }
}

#[test]
fn same_seed_same_result() {
    let world = World::generate(small(7)).unwrap();
    let a = compare(&world, &ALL_POLICIES);
    let b = compare(&World::generate(small(7)).unwrap(), &ALL_POLICIES);
    assert_eq!(a, b);
    let c = compare(&World::generate(small(8)).unwrap(), &ALL_POLICIES);
    assert_ne!(a, c);
}

#[test]
fn no_staging_hits_every_machine_of_every_broken_cluster() {
    let world = World::generate(small(3)).unwrap();
    let o = run(&world, PolicyKind::NoStaging);
    assert!(world.machines_in_broken_clusters() > 0);
    assert_eq!(o.installed_faulty, world.machines_in_broken_clusters());
    assert_eq!(o.tests_run, 0);
    assert_eq!(o.never_working, 0);
    assert!(o.releases >= 2, "the vendor fixed what was reported");
}

#[test]
fn staged_policies_protect_members_at_some_latency_cost() {
    let world = World::generate(small(3)).unwrap();
    let cmp = compare(&world, &ALL_POLICIES);
    let none = &cmp.outcomes[0];
    for o in &cmp.outcomes[1..] {
        assert_eq!(o.never_working, 0, "{o:?}");
        // With perfect clustering only representatives meet a faulty release.
        assert_eq!(o.installed_faulty, 0, "{o:?}");
        assert!(o.tested_faulty > 0, "{o:?}");
        assert!(o.hit_by_faulty < none.hit_by_faulty / 4, "{o:?} vs {none:?}");
        assert!(o.tests_run > 0);
    }
}

#[test]
fn a_world_without_problems_needs_one_release() {
    let world = World::generate(Scenario { problems: 0, ..small(5) }).unwrap();
    for o in compare(&world, &ALL_POLICIES).outcomes {
        assert_eq!(o.releases, 1);
        assert_eq!(o.hit_by_faulty, 0);
        assert_eq!(o.never_working, 0);
    }
}

#[test]
fn misplaced_machines_are_what_staging_cannot_protect() {
    let world = World::generate(Scenario { misplaced_share: 0.02, ..small(4) }).unwrap();
    assert_eq!(world.misplaced.len(), 30);
    let cmp = compare(&world, &ALL_POLICIES);
    let none = &cmp.outcomes[0];
    assert!(none.installed_faulty >= world.machines_in_broken_clusters());
    for o in &cmp.outcomes[1..] {
        assert!(o.installed_faulty > 0, "misplaced members install what their representatives passed: {o:?}");
        assert!(o.installed_faulty <= world.misplaced.len() as u64, "{o:?}");
        assert_eq!(o.never_working, 0);
    }
}

#[test]
fn hung_representatives_are_replaced_and_everyone_finishes() {
    let mut scenario = Scenario { problems: 1, ..small(6) };
    scenario.timing.slow_test_fraction = 0.5;
    let world = World::generate(scenario).unwrap();
    for policy in [PolicyKind::FrontLoading, PolicyKind::Balanced] {
        let o = run(&world, policy);
        assert_eq!(o.never_working, 0, "{o:?}");
        // Two seats per cluster and release; replacements run the extra tests.
        let seats = 2 * world.scenario.clusters as u64 * o.releases as u64;
        assert!(o.tests_run > seats, "{o:?}");
    }
}

/// The simulator's split of the core (one shared campaign, one member per machine) must
/// decide what the node's own core decides: replaying a machine's inputs into a
/// `Rollout` reproduces the machine's steps.
#[test]
fn the_node_core_fed_a_machines_inputs_takes_the_same_steps() {
    use mirage_protocol::staging::{Action, ApplyResult, ApplyStep, Event, Fault, NodeConfig, Rollout, Step, TestRun};
    use mirage_protocol::{Digest, UnixMillis};
    use trace::TraceInput;

    let mut scenario = Scenario { misplaced_share: 0.02, ..small(9) };
    // Members react at once, as the node's core does on every event.
    scenario.timing.react_max_ms = 0;
    scenario.timing.slow_test_fraction = 0.2;
    let world = World::generate(scenario).unwrap();
    // The smallest broken cluster, all of it: its representatives are among the watched.
    let broken =
        (0..world.members.len()).filter(|c| world.breaks[*c] != 0).min_by_key(|c| world.members[*c].len()).unwrap();
    let fine = (0..world.members.len()).find(|c| world.breaks[*c] == 0).unwrap();
    let misplaced = *world.misplaced.keys().min().unwrap();
    let mut watched: Vec<u32> = world.members[broken].iter().take(10).copied().collect();
    watched.extend(world.members[fine].iter().take(2));
    watched.push(misplaced);

    for policy in ALL_POLICIES {
        let mut tested = 0;
        for &m in &watched {
            let (_, trace) = Simulation::new(&world, policy).run_traced(m);
            let c = world.cluster_of[m as usize];
            let config = NodeConfig {
                app: vendor::APP.into(),
                me: world.public_keys[m as usize],
                fingerprint: world.fingerprint(c),
                scopes: Vec::new(),
            };
            let mut node = Rollout::new(config);
            for (c, machines) in world.members.iter().enumerate() {
                let members = machines
                    .iter()
                    .map(|i| Presence { peer: world.public_keys[*i as usize], since: UnixMillis(0) })
                    .collect();
                node.handle(Event::Members { cluster: world.cluster_keys[c], members }, UnixMillis(0));
            }
            let mut steps = Vec::new();
            for (at, input) in trace.inputs {
                let event = match input {
                    TraceInput::Manifest(manifest) => Event::Manifest(manifest),
                    TraceInput::Report(report) => Event::Report(report),
                    TraceInput::Timer => Event::Timer,
                    TraceInput::ContentReady(manifest) => Event::ContentReady { manifest },
                    TraceInput::TestFinished(manifest, outcome) => Event::TestFinished {
                        manifest,
                        run: TestRun {
                            outcome,
                            summary: String::new(),
                            logs_digest: Digest([0; 32]),
                            tests_run: 1,
                            duration_ms: 0,
                            failed_tests: Vec::new(),
                            output: String::new(),
                        },
                    },
                    TraceInput::ApplyFinished(manifest, healthy) => Event::ApplyFinished {
                        manifest,
                        result: if healthy {
                            ApplyResult::Healthy
                        } else {
                            ApplyResult::Failed {
                                fault: Fault::Release,
                                step: ApplyStep::HealthCheck,
                                logs_digest: Digest([0; 32]),
                                output: String::new(),
                            }
                        },
                    },
                };
                for action in node.handle(event, UnixMillis(at)) {
                    steps.extend(match action {
                        Action::Fetch { manifest } => Some(Step::Fetch(manifest)),
                        Action::RunTests { manifest } => Some(Step::RunTests(manifest)),
                        Action::PublishTestReport(r) => Some(Step::Publish(r.manifest_id, r.outcome)),
                        Action::Apply { manifest, .. } => Some(Step::Apply(manifest)),
                        Action::PublishProblemReport(p)
                            if p.failed_tests == [mirage_protocol::staging::rollout::HEALTH_CHECK] =>
                        {
                            Some(Step::ReportProblem(p.manifest_id))
                        }
                        Action::Persist(_) | Action::SetTimer(_) | Action::PublishProblemReport(_) => None,
                    });
                }
            }
            assert!(!trace.steps.is_empty(), "machine {m} did nothing under {policy}");
            assert_eq!(steps, trace.steps, "machine {m} (cluster {c}) under {policy}");
            tested += steps.iter().filter(|s| matches!(s, Step::RunTests(_))).count();
        }
        let staged = policy != PolicyKind::NoStaging;
        assert_eq!(tested > 0, staged, "{policy}: {tested} test runs");
    }
}

fn overlay_run(machines: u32, clusters: u32, o: &overlay::OverlayScenario) -> overlay::OverlayOutcome {
    let world = World::generate(Scenario { machines, clusters, seed: 3, ..Scenario::default() }).unwrap();
    let policy = world.scenario.policy(PolicyKind::Balanced);
    overlay::simulate(&world, o, &overlay::GossipModel::default(), &policy)
}

#[test]
fn observers_fed_the_same_signed_data_agree_on_representatives_and_stages() {
    let calm = overlay::OverlayScenario { observers: 120, churn_per_min: 0.0, loss: 0.0, ..Default::default() };
    let o = overlay_run(3_000, 60, &calm);
    assert_eq!(o.judged, o.observers, "without churn every observer is up and settled");
    assert_eq!(o.representative_agreement, 1.0);
    assert_eq!(o.stage_agreement, 1.0);
}

/// Heartbeats and summaries each have a rate cap: a node's cost grows only until a
/// fleet is big enough to reach both, then stays there (about 230 KB/min in and out at
/// 1,000,000 machines, see SIMULATOR.md), while all-to-all announcements grow with N.
#[test]
fn per_node_membership_cost_stays_bounded_while_all_to_all_announcements_grow_with_the_fleet() {
    let o = overlay::OverlayScenario { observers: 60, ..Default::default() };
    let small = overlay_run(2_000, 40, &o);
    let big = overlay_run(20_000, 400, &o);
    let total = |x: &overlay::OverlayOutcome| x.bytes_in_per_node_per_min + x.bytes_out_per_node_per_min;
    assert!(total(&big) < 2.0 * total(&small), "{} vs {} bytes/min", total(&big), total(&small));
    assert!(big.announce_bytes_in_per_node_per_min > 8.0 * small.announce_bytes_in_per_node_per_min);
    assert!(total(&big) < 250_000.0, "{} bytes/min", total(&big));
}

#[test]
fn a_release_scoped_to_what_it_touches_tests_once_per_variant_and_still_installs_nothing_faulty() {
    let sc =
        Scenario { machines: 3_000, clusters: 120, touched_variants: Some(6), problem_cluster_share: 0.2, ..small(5) };
    let world = World::generate(sc).unwrap();
    let per = world.per_upgrade().unwrap();
    let (full, scoped) = (compare(&world, &ALL_POLICIES), compare(&per, &ALL_POLICIES));
    for (f, s) in full.outcomes.iter().zip(&scoped.outcomes).skip(1) {
        assert_eq!(s.installed_faulty, 0, "{s:?}");
        assert_eq!(s.never_working, 0, "{s:?}");
        assert!(
            s.tests_run * 10 < f.tests_run,
            "{} tests scoped against {} over full clusters",
            s.tests_run,
            f.tests_run
        );
        assert!(s.tested_faulty < f.tested_faulty);
    }
}
