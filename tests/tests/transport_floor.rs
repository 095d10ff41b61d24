//! `mirage bench transport`, both paths, on a small fleet: every receiver pulls every
//! chunk and the command reports which path it measured. (Its figures are the bench's
//! business; this only keeps the tool working.)

use mirage_tests::mirage;

fn floor(extra: &[&str]) -> String {
    let mut args =
        vec!["bench", "transport", "--receivers", "3", "--mib", "4", "--chunk-kib", "256", "--timeout-secs", "60"];
    args.extend_from_slice(extra);
    mirage(&args).unwrap_or_else(|e| panic!("bench transport {extra:?} failed: {e}"))
}

fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or_else(|| panic!("no {key} in {out}"))
}

#[test]
fn both_transport_floors_move_every_chunk() {
    for (flags, path) in [(&[][..], "libp2p"), (&["--lanes"][..], "lanes")] {
        let out = floor(flags);
        assert_eq!(value(&out, "path "), path);
        assert_eq!(value(&out, "bytes_per_receiver_mib "), "4");
        let seconds: f64 = value(&out, "transport_3_s ").parse().expect("seconds");
        assert!(seconds > 0.0, "{out}");
    }
}
