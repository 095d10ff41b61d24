//! `mirage bench membership-scale`: per-node membership traffic and state against fleet
//! size, for today's all-to-all announcements and for heartbeats and summaries
//! (`protocol::roster`), from the simulator's overlay model; printed, and drawn as SVG.

use anyhow::{Context, Result};
use mirage_protocol::manifest::PolicyKind;
use mirage_testnet::sim::overlay::{self, GossipModel, OverlayOutcome, OverlayScenario};
use mirage_testnet::sim::{Scenario, World};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ScaleArgs {
    /// Fleet sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u32, 10_000, 100_000, 1_000_000])]
    machines: Vec<u32>,
    /// Machines per cluster on average (clusters = machines / this).
    #[arg(long, default_value_t = 50)]
    per_cluster: u32,
    /// Observer nodes sampled per fleet.
    #[arg(long, default_value_t = 200)]
    observers: u32,
    /// Write the figure here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn run(args: ScaleArgs) -> Result<()> {
    let mut rows: Vec<(u32, OverlayOutcome)> = Vec::new();
    println!(
        "machines  clusters  new KB/min (in+out)  with keep-alive and DHT  new state MB  old KB/min (in)  old state MB  agreement"
    );
    for &n in &args.machines {
        let clusters = (n / args.per_cluster.max(1)).max(1);
        let world = World::generate(Scenario { machines: n, clusters, seed: 1, ..Scenario::default() })
            .context("building the simulated fleet")?;
        let o = OverlayScenario { observers: args.observers, ..OverlayScenario::default() };
        let out = overlay::simulate(&world, &o, &GossipModel::default(), &world.scenario.policy(PolicyKind::Balanced));
        println!(
            "{n:>8}  {clusters:>8}  {:>19.1}  {:>23.1}  {:>12.2}  {:>15.0}  {:>12.1}  {:.4}",
            (out.bytes_in_per_node_per_min + out.bytes_out_per_node_per_min) / 1e3,
            all_overlay(&out) / 1e3,
            out.state_bytes_per_node / 1e6,
            out.announce_bytes_in_per_node_per_min / 1e3,
            out.announce_state_bytes_per_node / 1e6,
            out.representative_agreement
        );
        rows.push((n, out));
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&rows)).with_context(|| format!("writing {}", path.display()))?;
        println!("figure: {}", path.display());
    }
    Ok(())
}

/// Everything the overlay costs a node, in + out: membership traffic, keeping its
/// connections alive, and its share of DHT queries.
fn all_overlay(o: &OverlayOutcome) -> f64 {
    o.bytes_in_per_node_per_min
        + o.bytes_out_per_node_per_min
        + 2.0 * (o.keepalive_bytes_per_node_per_min + o.dht_bytes_per_node_per_min)
}

/// A named, coloured line of (machines, value) points.
type Series = (&'static str, &'static str, Vec<(f64, f64)>);

/// Two log-log panels: bytes per node per minute, and state per node, against N.
fn svg(rows: &[(u32, OverlayOutcome)]) -> String {
    let traffic: [Series; 3] = [
        (
            "all-to-all announcements (in)",
            "#c0392b",
            rows.iter().map(|(n, o)| (*n as f64, o.announce_bytes_in_per_node_per_min)).collect(),
        ),
        (
            "heartbeats + summaries (in + out)",
            "#2471a3",
            rows.iter().map(|(n, o)| (*n as f64, o.bytes_in_per_node_per_min + o.bytes_out_per_node_per_min)).collect(),
        ),
        (
            "with keep-alive and DHT queries (in + out)",
            "#7d3c98",
            rows.iter().map(|(n, o)| (*n as f64, all_overlay(o))).collect(),
        ),
    ];
    let state: [Series; 2] = [
        (
            "all-to-all announcements",
            "#c0392b",
            rows.iter().map(|(n, o)| (*n as f64, o.announce_state_bytes_per_node)).collect(),
        ),
        ("heartbeats + summaries", "#2471a3", rows.iter().map(|(n, o)| (*n as f64, o.state_bytes_per_node)).collect()),
    ];
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="960" height="400" font-family="sans-serif" font-size="12">
<rect width="960" height="400" fill="white"/>
"##
    );
    panel(&mut s, 0.0, "membership traffic per node (bytes/min)", &traffic, Some((250_000.0, "250 KB/min budget")));
    panel(&mut s, 480.0, "membership state per node (bytes)", &state, Some((64e6, "64 MB budget")));
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, x0: f64, title: &str, series: &[Series], budget: Option<(f64, &str)>) {
    let (left, top, w, h) = (x0 + 70.0, 40.0, 380.0, 290.0);
    let (xmin, xmax) = (3.0, 6.0); // log10 N
    let ys: Vec<f64> = series.iter().flat_map(|(_, _, p)| p.iter().map(|q| q.1.max(1.0).log10())).collect();
    let ymin =
        ys.iter().copied().fold(f64::INFINITY, f64::min).floor().min(budget.map_or(9.0, |b| b.0.log10()).floor());
    let ymax = ys.iter().copied().fold(0.0, f64::max).ceil().max(budget.map_or(0.0, |b| b.0.log10()).ceil());
    let px = |n: f64| left + (n.log10() - xmin) / (xmax - xmin) * w;
    let py = |v: f64| top + h - (v.max(1.0).log10() - ymin) / (ymax - ymin).max(1.0) * h;
    let _ = writeln!(s, r##"<text x="{}" y="22" font-size="14">{title}</text>"##, left);
    let _ = writeln!(s, r##"<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##);
    for e in 3..=6 {
        let x = px(10f64.powi(e));
        let _ = writeln!(s, r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#eee"/>"##, top, top + h);
        let _ = writeln!(s, r##"<text x="{x}" y="{}" text-anchor="middle">10^{e}</text>"##, top + h + 16.0);
    }
    let _ =
        writeln!(s, r##"<text x="{}" y="{}" text-anchor="middle">machines</text>"##, left + w / 2.0, top + h + 32.0);
    for e in (ymin as i32)..=(ymax as i32) {
        let y = py(10f64.powi(e));
        let _ = writeln!(s, r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/>"##, left + w);
        let _ = writeln!(s, r##"<text x="{}" y="{}" text-anchor="end">10^{e}</text>"##, left - 6.0, y + 4.0);
    }
    if let Some((v, label)) = budget {
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#27ae60" stroke-dasharray="5,4"/>"##,
            left + w
        );
        let _ = writeln!(s, r##"<text x="{}" y="{}" fill="#27ae60">{label}</text>"##, left + 6.0, y - 5.0);
    }
    for (i, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points.iter().map(|(n, v)| format!("{:.1},{:.1}", px(*n), py(*v))).collect();
        let _ =
            writeln!(s, r##"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"##, path.join(" "));
        for (n, v) in points {
            let _ = writeln!(s, r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"##, px(*n), py(*v));
        }
        let ly = top + 16.0 + 16.0 * i as f64;
        let _ = writeln!(s, r##"<text x="{}" y="{ly}" fill="{colour}">{name}</text>"##, left + 8.0);
    }
}
