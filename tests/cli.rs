//! The command line: `--version`, and commands not built yet saying so.

use std::process::Command;

fn fenice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fenice")).args(args).output().expect("running fenice")
}

#[test]
fn version_prints_the_crate_version() {
    let out = fenice(&["--version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("fenice {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_every_design_command() {
    let out = fenice(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["operator", "crd", "repo", "agent", "failover", "drill", "lab", "audit"] {
        assert!(help.contains(command), "--help lacks {command}:\n{help}");
    }
}

#[test]
fn a_command_not_built_yet_says_so_on_stderr_and_exits_2() {
    let out = fenice(&["drill", "start", "--plan", "westpole-to-azure"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no output on stdout: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fenice drill start: not available"), "{err}");
    // Within a command that is partly built, the missing subcommand says so too.
    let out = fenice(&["failover", "start", "--plan", "westpole-to-azure"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fenice failover start: not available"));
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let out = fenice(&["fail-over"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fail-over"));
}

#[test]
fn failover_simulate_reports_the_time_to_bring_tenants_back() {
    let out = fenice(&["failover", "simulate", "--tenants", "40", "--parallelism", "4", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["tenants"], 40);
    assert_eq!(outcome["phase"], "Succeeded");
    // 4 gold, 12 silver and 24 bronze tenants, 4 at a time: 1 + 3 + 6 rounds
    // of 8 s of steps (restore 6, reconcile 0.5, start 1, switch 0.2, verify 0.3).
    let total = outcome["total_seconds"].as_f64().unwrap();
    assert!((80.0..90.0).contains(&total), "{outcome}");
}
