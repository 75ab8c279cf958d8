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

/// `fenice failover report` reads a failover's state from the witness store
/// (here a directory) and prints its report; exit 1 unless it succeeded.
#[test]
fn a_failover_report_is_read_from_the_witness_store() {
    let witness = tempfile::tempdir().unwrap();
    let span = |step: &str, began: u64| serde_json::json!({"step": step, "began": began, "ended": began + 2000});
    let tenant = |name: &str, step: &str, error: Option<&str>| {
        serde_json::json!({
            "tenant": {"namespace": "invoicing", "name": name}, "step": step, "rtoMs": 8000, "rpoMs": 300,
            "snapshotId": format!("snap-{name}"), "error": error,
            "timeline": [span("Restoring", 1_800_000_000_000), span("Reconciling", 1_800_000_002_000)],
        })
    };
    let state = serde_json::json!({
        "name": "westpole-lost", "plan": "westpole-to-azure", "trigger": "Automatic", "source": "westpole",
        "target": "azure", "phase": "Failed", "epoch": 2, "declaredLoss": 1_800_000_000_000u64,
        "waves": [{"name": "gold", "parallelism": 4, "gate": {"maxFailedTenants": 0, "requireApproval": false},
                   "tenants": [tenant("studio-rossi", "Succeeded", None), tenant("geom-bianchi", "Failed", Some("no backup"))]}],
    });
    let key = witness.path().join("witness/westpole-to-azure/failovers/westpole-lost.json");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, state.to_string()).unwrap();
    let dir = witness.path().to_str().unwrap();
    let report = |format: &str| {
        let args = ["failover", "report", "westpole-lost", "--plan", "westpole-to-azure", "--witness", dir, "--format"];
        fenice(&[&args[..], &[format]].concat())
    };
    let md = report("md");
    assert_eq!(md.status.code(), Some(1), "a failed failover: {}", String::from_utf8_lossy(&md.stderr));
    let text = String::from_utf8_lossy(&md.stdout);
    assert!(text.starts_with("# Failover westpole-lost: FAILED"), "{text}");
    assert!(text.contains("| invoicing/geom-bianchi | gold | Failed |") && text.contains("no backup"), "{text}");
    let html = String::from_utf8_lossy(&report("html").stdout).into_owned();
    assert_eq!(html.matches("class=\"bar\"").count(), 4, "two steps of two tenants: {html}");
    let missing = fenice(&["failover", "report", "other", "--plan", "westpole-to-azure", "--witness", dir]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no failover other of plan westpole-to-azure"), "{err}");
}
