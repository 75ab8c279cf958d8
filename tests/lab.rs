//! `fenice lab` end to end, small: two tenants, a short working time. The
//! whole story runs (providers, backups, a drill, the kill, the automatic
//! failover, the old primary's restart) and lab.json says it passed.

use std::process::{Command, Stdio};

use serde_json::Value;

/// One lab at a time: each runs dozens of processes, and two at once on a
/// small machine would test the machine.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_lab_kills_the_primary_and_every_tenant_comes_back_with_every_invoice_once() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["lab", "--tenants", "2", "--work-seconds", "3", "--parallelism", "2", "--report-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report: Value = match std::fs::read(dir.path().join("lab.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(e) => panic!("no lab.json ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"),
    };
    assert!(out.status.success(), "the lab failed:\n{stdout}\n{stderr}");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["tenants"], 2);
    assert!(report["invoices_issued"].as_u64().unwrap() > 0);
    for zero in ["invoices_lost", "duplicate_numbers", "sdi_duplicates"] {
        assert_eq!(report[zero], 0, "{zero}: {report:#}");
    }
    for (flag, expected) in [
        ("pending_sent_exactly_once", true),
        ("receipts_carried", true),
        ("dual_active", false),
        ("old_primary_fenced", true),
    ] {
        assert_eq!(report[flag], expected, "{flag}: {report:#}");
    }
    for figure in ["detect_seconds", "rto_seconds", "rpo_seconds"] {
        let (p50, max) = (report[figure]["p50"].as_f64().unwrap(), report[figure]["max"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= max, "{figure}: {report:#}");
    }
    assert_eq!(report["failover"]["phase"], "Succeeded");
    assert_eq!(report["drill"]["passed"], true);
    assert_eq!(report["per_tenant"].as_array().unwrap().len(), 2);
    // The terminal shows the story as it goes, and a summary.
    for step in ["KILL", "took the lease under epoch 2", "drill passed", "restarted apps refuse to issue"] {
        assert!(stderr.contains(step), "progress lacks {step:?}:\n{stderr}");
    }
    assert!(stdout.contains("fenice lab: PASSED"), "{stdout}");
}

#[test]
fn no_tenants_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["lab", "--tenants", "0", "--report-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenants must be at least 1"));
}

#[test]
fn an_interrupted_lab_stops_everything_and_leaves_nothing_behind() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;

    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    // The lab's temporary directory, where every process it starts keeps its files.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let report = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["lab", "--tenants", "1", "--report-dir"])
        .arg(report.path())
        .env("TMPDIR", tmp.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().unwrap_or_else(|| panic!("the lab ended early:\n{}", seen.join("\n"))).unwrap();
        let working = line.contains("customers issue an invoice");
        seen.push(line);
        if working {
            break;
        }
    }
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    // SAFETY: sends SIGINT to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    let rest = drain.join().unwrap();
    assert_eq!(status.code(), Some(130), "{}", rest.join("\n"));
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{}", rest.join("\n"));
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!report.path().join("lab.json").exists());
}
