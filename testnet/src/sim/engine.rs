//! The simulation loop: a second shell over the protocol's staging core.
//!
//! What the node does with the core's actions, the engine does with virtual time:
//! a fetch becomes a `FetchDone` event some minutes later, a test run a `TestDone`,
//! a published report a `ReportHeard` after gossip delay, and so on. Decisions are the
//! core's: one shared [`Campaign`] (every simulated node would compute the same one
//! from the same signed data) and one [`Member`] per machine.
//!
//! One simplification follows from sharing the campaign: every node hears a given
//! report or manifest at the same instant (one gossip delay is drawn per message, not
//! per receiver). Per-machine reaction times are drawn separately.

use super::outcome::PolicyOutcome;
use super::queue::{EventQueue, SimTime};
use super::scenario::World;
use super::trace::{Trace, TraceInput};
use super::vendor::Vendor;
use mirage_protocol::fingerprint::ClusterKey;
use mirage_protocol::manifest::PolicyKind;
use mirage_protocol::presence::Presence;
use mirage_protocol::report::{Outcome, TestReport};
use mirage_protocol::staging::{Campaign, Fault, Member, Step, Verdict};
use mirage_protocol::{Digest, Envelope, Keypair, PublicKey, UnixMillis, Verified};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Release index (into the vendor's releases), machine index, cluster index.
type Rel = u16;
type Mach = u32;
type Clu = u32;

#[derive(Clone, Copy, Debug)]
enum Event {
    /// Every node has heard this release's manifest.
    ManifestHeard(Rel),
    /// The campaign's timer (representative deadlines, stage timeouts).
    Tick,
    /// Every node has heard this report (index into `reports`).
    ReportHeard(u32),
    /// The machine looks at its cluster's view again.
    Observe(Mach),
    FetchDone(Mach, Rel),
    TestDone(Mach, Rel),
    ApplyDone(Mach, Rel),
    /// A problem report about this release from this machine reached the vendor.
    ProblemAtVendor(Rel, Mach),
    FixReady(u32),
}

/// What a cluster's members last saw; a change means every member looks again.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    release: Digest,
    open: bool,
    verdict: VerdictKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum VerdictKind {
    NotOpen,
    Pending,
    Holds,
    Halted,
}

impl From<Verdict> for VerdictKind {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::NotOpen => VerdictKind::NotOpen,
            Verdict::Pending => VerdictKind::Pending,
            Verdict::Holds { .. } => VerdictKind::Holds,
            Verdict::Halted { .. } => VerdictKind::Halted,
        }
    }
}

/// Per-machine state: the core's member plus what the metrics need.
#[derive(Clone, Copy)]
struct Machine {
    member: Member,
    /// When it first ran a release that works for it.
    working_since: Option<SimTime>,
    installed_faulty: bool,
    tested_faulty: bool,
}

pub struct Simulation<'w> {
    world: &'w World,
    policy: PolicyKind,
    rng: ChaCha8Rng,
    queue: EventQueue<Event>,
    campaign: Campaign,
    vendor: Vendor,
    machines: Vec<Machine>,
    machine_of: HashMap<PublicKey, Mach>,
    cluster_of_key: HashMap<ClusterKey, Clu>,
    seen: Vec<Option<Seen>>,
    reports: Vec<Verified<TestReport>>,
    /// Keys of machines that signed a report: a representative signs one per release,
    /// and deriving an ed25519 key costs as much as signing with it.
    signers: HashMap<Mach, Keypair>,
    tick_at: Option<SimTime>,
    watched: Option<(Mach, Trace)>,
    tests_run: u64,
    reports_rejected: u64,
}

impl<'w> Simulation<'w> {
    pub fn new(world: &'w World, policy: PolicyKind) -> Self {
        let sc = &world.scenario;
        // Each policy gets the same random stream, so runs differ only by policy.
        let rng = ChaCha8Rng::seed_from_u64(sc.seed ^ 0x005e_ed0f_5e55_10a5);
        let mut campaign = Campaign::new();
        for (c, machines) in world.members.iter().enumerate() {
            // The fleet was there long before the release: every machine may represent.
            let keys = machines
                .iter()
                .map(|m| Presence { peer: world.public_keys[*m as usize], since: UnixMillis(0) })
                .collect();
            campaign.set_members(world.cluster_keys[c], keys, UnixMillis(0));
        }
        let blank =
            Machine { member: Member::new(), working_since: None, installed_faulty: false, tested_faulty: false };
        Simulation {
            world,
            policy,
            rng,
            queue: EventQueue::new(),
            campaign,
            vendor: Vendor::new(sc.seed, sc.policy(policy)),
            machines: vec![blank; world.cluster_of.len()],
            machine_of: world.public_keys.iter().enumerate().map(|(i, k)| (*k, i as Mach)).collect(),
            cluster_of_key: world.cluster_keys.iter().enumerate().map(|(i, k)| (*k, i as Clu)).collect(),
            seen: vec![None; world.members.len()],
            reports: Vec::new(),
            signers: HashMap::new(),
            tick_at: None,
            watched: None,
            tests_run: 0,
            reports_rejected: 0,
        }
    }

    /// Runs until nothing is left to happen, recording what `machine`'s node would
    /// have been fed and what it did.
    pub fn run_traced(mut self, machine: u32) -> (PolicyOutcome, Trace) {
        self.watched = Some((machine, Trace::default()));
        self.run_loop();
        let trace = self.watched.take().map(|(_, t)| t).unwrap_or_default();
        (self.outcome(), trace)
    }

    /// Runs until nothing is left to happen.
    pub fn run(mut self) -> PolicyOutcome {
        self.run_loop();
        self.outcome()
    }

    fn run_loop(&mut self) {
        let first = self.vendor.release(0);
        let delay = self.world.scenario.timing.gossip(&mut self.rng);
        self.queue.push(delay, Event::ManifestHeard(first));
        while let Some((now, event)) = self.queue.pop() {
            self.record(now, event);
            self.handle(now, event);
        }
    }

    /// Notes the inputs the watched machine's node would handle.
    fn record(&mut self, now: SimTime, event: Event) {
        let Some((watched, trace)) = self.watched.as_mut() else {
            return;
        };
        let id = |r: Rel| self.vendor.release_at(r).id;
        let faulty = |m: Mach, r: Rel| self.vendor.is_faulty(r, self.world.breaks_of(m));
        let input = match event {
            Event::ManifestHeard(r) => TraceInput::Manifest(self.vendor.release_at(r).manifest.clone()),
            Event::ReportHeard(i) => TraceInput::Report(self.reports[i as usize].clone()),
            Event::Tick if self.tick_at == Some(now) => TraceInput::Timer,
            Event::FetchDone(m, r) if m == *watched => TraceInput::ContentReady(id(r)),
            Event::TestDone(m, r) if m == *watched => {
                let outcome = if faulty(m, r) { Outcome::Fail } else { Outcome::Pass };
                TraceInput::TestFinished(id(r), outcome)
            }
            Event::ApplyDone(m, r) if m == *watched => TraceInput::ApplyFinished(id(r), !faulty(m, r)),
            _ => return,
        };
        trace.inputs.push((now, input));
    }

    fn handle(&mut self, now: SimTime, event: Event) {
        let world = self.world;
        let timing = &world.scenario.timing;
        match event {
            Event::ManifestHeard(r) => {
                let manifest = &self.vendor.release_at(r).manifest;
                if let Ok(changed) = self.campaign.start_release(manifest, UnixMillis(now)) {
                    self.notify(changed, now);
                }
                self.arm_timer();
            }
            Event::Tick => {
                if self.tick_at == Some(now) {
                    self.tick_at = None;
                    let changed = self.campaign.tick(UnixMillis(now));
                    self.notify(changed, now);
                }
                self.arm_timer();
            }
            Event::ReportHeard(i) => {
                match self.campaign.admit(&self.reports[i as usize], UnixMillis(now)) {
                    Ok(changed) => self.notify(changed, now),
                    Err(_) => self.reports_rejected += 1,
                }
                self.arm_timer();
            }
            Event::Observe(m) => {
                let view = self.view(m);
                let step = self.machines[m as usize].member.observe(view.as_ref());
                self.carry_out(m, step, now);
            }
            Event::FetchDone(m, r) => {
                let view = self.view(m);
                let id = self.vendor.release_at(r).id;
                let step = self.machines[m as usize].member.content_ready(id, view.as_ref());
                self.carry_out(m, step, now);
            }
            Event::TestDone(m, r) => {
                self.tests_run += 1;
                let faulty = self.is_faulty(m, r);
                self.machines[m as usize].tested_faulty |= faulty;
                let outcome = if faulty { Outcome::Fail } else { Outcome::Pass };
                let id = self.vendor.release_at(r).id;
                let step = self.machines[m as usize].member.test_finished(id, outcome);
                self.carry_out(m, step, now);
            }
            Event::ApplyDone(m, r) => {
                let faulty = self.is_faulty(m, r);
                let machine = &mut self.machines[m as usize];
                machine.installed_faulty |= faulty;
                if !faulty && machine.working_since.is_none() {
                    machine.working_since = Some(now);
                }
                let id = self.vendor.release_at(r).id;
                let view = self.view(m);
                let result = if faulty { Err(Fault::Release) } else { Ok(()) };
                let step = self.machines[m as usize].member.apply_finished(id, result, view.as_ref());
                self.carry_out(m, step, now);
            }
            Event::ProblemAtVendor(r, m) => {
                // The report carries the machine's fingerprint and logs: the vendor
                // learns what broke that machine.
                let new = self.vendor.problem_reported(r, world.breaks_of(m));
                for p in (0..64).filter(|p| new & (1u64 << p) != 0) {
                    self.queue.push(now + world.fix_ms[p as usize], Event::FixReady(p));
                }
            }
            Event::FixReady(p) => {
                self.vendor.fix_ready(p);
                let r = self.vendor.release(now);
                let at = now + timing.gossip(&mut self.rng);
                self.queue.push(at, Event::ManifestHeard(r));
            }
        }
    }

    /// Carries out a member's step the way the node would, in virtual time.
    fn carry_out(&mut self, m: Mach, step: Option<Step>, now: SimTime) {
        let Some(step) = step else {
            return;
        };
        if let Some((_, trace)) = self.watched.as_mut().filter(|(w, _)| *w == m) {
            trace.steps.push(step);
        }
        let world = self.world;
        let timing = &world.scenario.timing;
        let release = self.vendor.index_of(step.manifest()).expect("members only work on released manifests");
        match step {
            Step::Fetch(_) => self.queue.push(now + timing.download(&mut self.rng), Event::FetchDone(m, release)),
            Step::RunTests(_) => self.queue.push(now + timing.test(&mut self.rng), Event::TestDone(m, release)),
            Step::Apply(_) => self.queue.push(now + timing.apply(&mut self.rng), Event::ApplyDone(m, release)),
            Step::ReportProblem(_) => {
                // An unhealthy apply, undone by the installer, is reported to the vendor,
                // as the node's core does.
                self.queue.push(now + timing.gossip(&mut self.rng), Event::ProblemAtVendor(release, m));
            }
            Step::Publish(_, outcome) => {
                let report = self.sign_report(m, release, outcome, now);
                self.reports.push(report);
                let heard = now + timing.gossip(&mut self.rng);
                self.queue.push(heard, Event::ReportHeard((self.reports.len() - 1) as u32));
                if outcome == Outcome::Fail {
                    self.queue.push(now + timing.gossip(&mut self.rng), Event::ProblemAtVendor(release, m));
                }
                // The node hears its own report at once (it feeds it back to its core)
                // and looks at its view again: the gate may already hold without it.
                self.queue.push(now, Event::Observe(m));
            }
        }
    }

    fn sign_report(&mut self, m: Mach, r: Rel, outcome: Outcome, now: SimTime) -> Verified<TestReport> {
        let manifest = self.vendor.release_at(r).manifest.payload();
        let report = TestReport {
            manifest_id: self.vendor.release_at(r).id,
            app: manifest.app.clone(),
            version: manifest.version.clone(),
            cluster_key: self.world.cluster_keys[self.world.cluster_of[m as usize] as usize],
            outcome,
            summary: String::new(),
            logs_digest: Digest([0; 32]),
            tests_run: 1,
            duration_ms: 0,
        };
        // Reports go through real signatures and verification, as on the wire.
        let world = self.world;
        let key = self.signers.entry(m).or_insert_with(|| world.keypair(m));
        let envelope = Envelope::sign(key, &report, UnixMillis(now)).expect("a report encodes");
        envelope.verify().expect("a machine's own signature verifies")
    }

    fn view(&self, m: Mach) -> Option<mirage_protocol::staging::View> {
        let c = self.world.cluster_of[m as usize] as usize;
        self.campaign.view(&self.world.cluster_keys[c], &self.world.public_keys[m as usize])
    }

    fn is_faulty(&self, m: Mach, r: Rel) -> bool {
        self.vendor.is_faulty(r, self.world.breaks_of(m))
    }

    /// Wakes the members of changed clusters. When only the seats moved, only the seat
    /// holders need to look; otherwise the whole cluster does.
    fn notify(&mut self, changed: Vec<ClusterKey>, now: SimTime) {
        let world = self.world;
        let timing = &world.scenario.timing;
        let Some(release) = self.campaign.release().map(|r| r.id) else {
            return;
        };
        for key in changed {
            let Some(&c) = self.cluster_of_key.get(&key) else {
                continue;
            };
            let Some(eval) = self.campaign.evaluation(&key) else {
                continue;
            };
            let seen = Seen { release, open: eval.verdict != Verdict::NotOpen, verdict: eval.verdict.into() };
            if self.seen[c as usize] != Some(seen) {
                self.seen[c as usize] = Some(seen);
                for &m in &world.members[c as usize] {
                    self.queue.push(now + timing.react(&mut self.rng), Event::Observe(m));
                }
            } else {
                for seat in &eval.seats {
                    if let Some(&m) = self.machine_of.get(&seat.holder) {
                        self.queue.push(now + timing.react(&mut self.rng), Event::Observe(m));
                    }
                }
            }
        }
    }

    fn arm_timer(&mut self) {
        let Some(UnixMillis(at)) = self.campaign.next_timeout() else {
            return;
        };
        if self.tick_at.is_none_or(|t| at < t || t < self.queue.now()) {
            self.tick_at = Some(at);
            self.queue.push(at, Event::Tick);
        }
    }

    fn outcome(&self) -> PolicyOutcome {
        let done: Vec<SimTime> = self.machines.iter().filter_map(|m| m.working_since).collect();
        PolicyOutcome {
            policy: self.policy,
            machines: self.machines.len() as u64,
            installed_faulty: self.machines.iter().filter(|m| m.installed_faulty).count() as u64,
            tested_faulty: self.machines.iter().filter(|m| m.tested_faulty).count() as u64,
            hit_by_faulty: self.machines.iter().filter(|m| m.installed_faulty || m.tested_faulty).count() as u64,
            tests_run: self.tests_run,
            releases: self.vendor.releases().len() as u32,
            latency_max_ms: done.iter().copied().max().unwrap_or(0),
            latency_mean_ms: if done.is_empty() { 0 } else { done.iter().sum::<u64>() / done.len() as u64 },
            never_working: (self.machines.len() - done.len()) as u64,
            reports_rejected: self.reports_rejected,
            events: self.queue.processed(),
        }
    }
}
