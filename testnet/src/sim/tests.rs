//! Whole-simulation tests at small scale (fast in debug builds).

use super::*;
use mirage_protocol::manifest::PolicyKind;

fn small(seed: u64) -> Scenario {
    Scenario {
        machines: 1_500,
        clusters: 60,
        problems: 3,
        problem_cluster_share: 0.1,
        seed,
        ..Scenario::default()
    }
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
        assert!(
            o.hit_by_faulty < none.hit_by_faulty / 4,
            "{o:?} vs {none:?}"
        );
        assert!(o.tests_run > 0);
    }
}

#[test]
fn a_world_without_problems_needs_one_release() {
    let world = World::generate(Scenario {
        problems: 0,
        ..small(5)
    })
    .unwrap();
    for o in compare(&world, &ALL_POLICIES).outcomes {
        assert_eq!(o.releases, 1);
        assert_eq!(o.hit_by_faulty, 0);
        assert_eq!(o.never_working, 0);
    }
}

#[test]
fn misplaced_machines_are_what_staging_cannot_protect() {
    let world = World::generate(Scenario {
        misplaced_share: 0.02,
        ..small(4)
    })
    .unwrap();
    assert_eq!(world.misplaced.len(), 30);
    let cmp = compare(&world, &ALL_POLICIES);
    let none = &cmp.outcomes[0];
    assert!(none.installed_faulty >= world.machines_in_broken_clusters());
    for o in &cmp.outcomes[1..] {
        assert!(
            o.installed_faulty > 0,
            "misplaced members install what their representatives passed: {o:?}"
        );
        assert!(o.installed_faulty <= world.misplaced.len() as u64, "{o:?}");
        assert_eq!(o.never_working, 0);
    }
}

#[test]
fn hung_representatives_are_replaced_and_everyone_finishes() {
    let mut scenario = Scenario {
        problems: 1,
        ..small(6)
    };
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
