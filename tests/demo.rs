//! `mptcp demo` end to end: the built binary, as root and as an unprivileged
//! user (which makes it enter a user namespace by itself).

use std::process::{Command, Output};

const DEMO_ARGS: [&str; 3] = ["demo", "--seconds", "2"];

fn demo_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mptcp"));
    cmd.args(DEMO_ARGS).current_dir("/");
    cmd
}

/// Checks the demo's output: its table and its failover verdict, for links
/// whose rates add up to `sum_of_rates`. Returns the measured ratio MPTCP /
/// best single TCP.
fn check_demo_output(out: &Output, sum_of_rates: u32) -> f64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mptcp demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
    // The number at the end of the table's line that starts with `label`.
    let value = |label: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"));
        let number = line.split_whitespace().last().unwrap_or_default();
        number
            .trim_end_matches(['x', '%'])
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let singles: Vec<f64> = stdout
        .lines()
        .filter(|line| line.starts_with("single TCP, link "))
        .map(|line| line.split_whitespace().last().unwrap().parse().unwrap())
        .collect();
    assert!(!singles.is_empty(), "{stdout}");
    let best = singles.iter().copied().fold(0.0, f64::max);
    let sum = value("sum of single TCP");
    let mptcp = value("MPTCP ");
    assert!(
        singles.iter().all(|tcp| *tcp > 5.0),
        "single TCP {singles:?}"
    );
    // Identical links share one line, counted once per link in the sum.
    let listed: f64 = singles.iter().sum();
    assert!(
        sum > best && sum + 0.15 >= listed,
        "sum {sum}, single TCP {singles:?}"
    );
    assert!(mptcp > 5.0, "MPTCP {mptcp}");
    let ratio = value("ratio MPTCP / best link");
    assert!((ratio - mptcp / best).abs() < 0.02, "ratio {ratio}");
    let of_sum = value("of the sum of single TCP");
    assert!((of_sum - mptcp / sum * 100.0).abs() < 1.0, "{of_sum} %");
    let of_rates = value(&format!("of the {sum_of_rates} Mbit/s sum of rates"));
    let expected = mptcp / f64::from(sum_of_rates) * 100.0;
    assert!((of_rates - expected).abs() < 1.0, "{of_rates} %");
    assert!(
        stdout.contains("link 1 (198.18.1.1 <-> 198.18.1.2) DOWN"),
        "{stdout}"
    );
    assert!(stdout.contains("checksums match: no byte lost"), "{stdout}");
    // The summary says how long the failure stalled the transfer.
    let stall: f64 = stdout
        .split("failover: the longest stall was ")
        .nth(1)
        .and_then(|rest| rest.split(" s;").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stall in the summary:\n{stdout}"));
    assert!((0.0..3.0).contains(&stall), "stall {stall} s");
    assert!(stdout.contains("(80% of the remaining links)"), "{stdout}");
    ratio
}

#[test]
fn demo_shows_aggregation_and_failover() {
    let out = demo_command().output().expect("running mptcp demo");
    let ratio = check_demo_output(&out, 40);
    // The test bed's own test asserts the 1.7x target with longer runs;
    // here a short run only has to show the aggregation.
    assert!(ratio > 1.4, "ratio {ratio}");
}

#[test]
fn demo_measures_each_of_a_mixed_pair_of_links() {
    let out = Command::new(env!("CARGO_BIN_EXE_mptcp"))
        .args([
            "demo",
            "--link",
            "20:5ms",
            "--link",
            "10:40ms",
            "--seconds",
            "3",
        ])
        .current_dir("/")
        .output()
        .expect("running mptcp demo");
    check_demo_output(&out, 30);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "2 links (link 0 20 Mbit/s, 5 ms; link 1 10 Mbit/s, 40 ms)",
        "single TCP, link 0 (20 Mbit/s, 5 ms)",
        "single TCP, link 1 (10 Mbit/s, 40 ms)",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

#[test]
fn demo_runs_without_root_in_a_user_namespace() {
    let copy =
        mptcp_testbed::UnprivilegedCopy::new(std::path::Path::new(env!("CARGO_BIN_EXE_mptcp")))
            .expect("copying mptcp for nobody");
    let mut cmd = copy.command(&[]);
    cmd.args(DEMO_ARGS);
    let out = cmd.output().expect("running mptcp demo");
    check_demo_output(&out, 40);
}
