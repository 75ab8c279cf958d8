//! `fenice lab` end to end, small: two tenants, a short working time. The
//! whole story runs (providers, backups, a drill, the kill, the automatic
//! failover, the old primary's restart) and lab.json says it passed; no
//! secret of the run shows in its output, its reports or the files it left.

use std::process::{Command, Stdio};

use serde_json::Value;

/// One lab at a time: each runs dozens of processes, and two at once on a
/// small machine would test the machine.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_lab_kills_the_primary_and_every_tenant_comes_back_with_every_invoice_once() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let LabRun { stdout, stderr, report, dir } = run_lab(&[]);
    assert_the_checks_passed(&report, &stdout, &stderr);
    assert_eq!(report["fault"], "kill");
    // The witness is an object store of its own, as at a third provider.
    let witness = report["witness"].as_str().unwrap_or_default();
    assert!(witness.contains("bucket fenice-lab-witness of an S3 server"), "{witness}");
    assert_eq!((&report["drill"]["passed"], &report["drill"]["tenants"]), (&Value::Bool(true), &Value::from(1)));
    for figure in ["rto_seconds", "rpo_seconds"] {
        assert!(report["drill"][figure].as_f64().is_some_and(|s| s >= 0.0), "drill {figure}: {report:#}");
    }
    // The drill's and the failover's reports render in a browser, with their timelines.
    let (dom, pixels) = render(&dir.path().join("drill.html"), dir.path());
    assert!(dom.contains("aria-label=\"drill timeline\"") && dom.contains("Drill lab-drill: "), "{dom}");
    assert_eq!(dom.matches("class=\"bar\"").count(), 1, "{dom}");
    assert_drawn(&pixels, "the drill's bar, green", [0x22, 0xaa, 0x22]);
    let (dom, pixels) = render(&dir.path().join("failover.html"), dir.path());
    assert!(dom.contains("aria-label=\"failover timeline\"") && dom.contains("succeeded"), "{dom}");
    assert!(dom.matches("class=\"bar\"").count() >= 2 * 5, "five steps of two tenants: {dom}");
    assert_drawn(&pixels, "the restore bars, blue", [0x33, 0x66, 0xcc]);
    assert_eq!(report["per_tenant"].as_array().unwrap().len(), 2);
    // The terminal shows the story as it goes, and a summary.
    for step in ["KILL", "took the lease under epoch 2", "drill passed", "restarted apps refuse to issue"] {
        assert!(stderr.contains(step), "progress lacks {step:?}:\n{stderr}");
    }
}

#[test]
fn the_lab_cuts_the_primarys_network_and_the_primary_fences_itself_before_the_standby_takes_over() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    if !network_namespaces() {
        return;
    }
    let LabRun { stdout, stderr, report, .. } = run_lab(&["--fault", "network-cut"]);
    // NB: the namespaces are removed once the lab ends, whatever its outcome.
    assert_eq!(labs_namespaces(), Vec::<String>::new(), "network namespaces left behind");
    assert_the_checks_passed(&report, &stdout, &stderr);
    assert_eq!(report["fault"], "network-cut");
    // The cut primary fenced itself, and before the standby took the lease.
    let fenced = report["primary_fenced_seconds"].as_f64().unwrap_or_else(|| panic!("never fenced: {report:#}"));
    let takeover = report["detect_seconds"]["max"].as_f64().unwrap();
    assert!(fenced < takeover, "fenced {fenced} s after the cut, the standby took over at {takeover} s: {report:#}");
    assert!(report["witness"].as_str().unwrap().contains("an S3 server at http://10.213.0.1:"), "{report:#}");
    for step in ["CUT: westpole's network link is down", "network is back", "lease agent: fenced (the lease names"] {
        assert!(stderr.contains(step), "progress lacks {step:?}:\n{stderr}");
    }
    // Each app at the cut primary refuses to issue, or its fence stopped it
    // (one whose commit waited for the cut standby cannot confirm in time).
    let (refusing, running, stopped) = refusing_apps(&stderr);
    assert_eq!((refusing, running + stopped), (running, 2), "{stderr}");
}

/// The lab through the operators: an API server in the lab's process, one
/// `fenice operator --site` per site, everything through the custom
/// resources. The standby's operator keeps a synchronous standby of each
/// tenant's database, which the Failover promotes: every check passes, with
/// no invoice lost.
#[test]
fn the_lab_through_the_operators_fails_every_tenant_over_to_its_synchronous_standby_and_loses_nothing() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let (LabRun { stdout, stderr, report, .. }, passed) = run_lab_to_the_end(&["--operators"]);
    assert!(passed, "{stdout}\n{stderr}");
    assert_the_checks_passed(&report, &stdout, &stderr);
    assert_eq!(report["standby"], "sync", "{report:#}");
    assert_eq!((&report["failover"]["succeeded"], &report["failover"]["epoch"]), (&Value::from(2), &Value::from(2)));
    assert_eq!(report["drill"]["passed"], true, "{report:#}");
    for step in [
        "2 standbys streaming",
        "azure's operator took the lease under epoch 2",
        "Failover westpole-to-azure-e2: Succeeded, 2/2",
        "its standing Fenced, the lease unchanged (azure in epoch 2), it started no stack",
    ] {
        assert!(stderr.contains(step), "progress lacks {step:?}:\n{stderr}");
    }
}

/// The same with `--standby cold`. Every step holds: the Backups, the Drill,
/// the detection, the lease, the Failover, the old primary fenced, each
/// pending invoice sent once, no second site active. Its tenants wait cold at
/// the standby (the operators recover them from base backup and archive), so what the last
/// instant before the kill confirmed, neither archived nor at SdI yet, is
/// lost, and its number is issued again at the standby: the report says so
/// and the lab fails on it, until the operators keep synchronous standbys.
/// The verdict follows the loss.
#[test]
fn the_lab_through_the_operators_fails_every_tenant_over_and_reports_what_a_cold_standby_loses() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let (LabRun { stdout, stderr, report, .. }, passed) = run_lab_to_the_end(&["--operators", "--standby", "cold"]);
    assert_eq!((&report["standby"], &report["tenants"]), (&Value::from("cold"), &Value::from(2)), "{report:#}");
    assert_eq!(report["failover"]["phase"], "Succeeded", "{report:#}\n{stderr}");
    assert_eq!((&report["failover"]["succeeded"], &report["failover"]["epoch"]), (&Value::from(2), &Value::from(2)));
    // The copy's test invoice goes to a second simulator, which numbers its identifiers from the
    // start, as SdI's test environment does: production's are in the restored copy.
    assert_eq!(report["drill"]["passed"], true, "{report:#}\n{stderr}");
    assert_eq!(report["sdi_duplicates"], 0, "{report:#}");
    assert_every_send_once_and_one_site_active(&report);
    for objective in report["objectives"].as_array().unwrap() {
        assert_eq!(objective["met"], true, "{objective:#}: {report:#}");
    }
    // What a cold standby costs, and nothing else: each lost invoice's number was issued again.
    assert_eq!(report["invoices_lost"], report["duplicate_numbers"], "{report:#}");
    for problem in report["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()) {
        assert!(problem.starts_with("lost: ") || problem.ends_with("was confirmed 2 times"), "{problem}");
    }
    assert_eq!(passed, report["invoices_lost"] == 0, "the verdict follows the loss: {stdout}");
    assert_eq!(report["passed"], passed);
    for step in [
        "resources applied",
        "2 Backups succeeded",
        "drill: a Drill of tenant-",
        "azure's operator took the lease under epoch 2",
        "Failover westpole-to-azure-e2: Succeeded, 2/2",
        "its standing Fenced, the lease unchanged (azure in epoch 2), it started no stack",
    ] {
        assert!(stderr.contains(step), "progress lacks {step:?}:\n{stderr}");
    }
}

/// From "N/M apps refuse to issue, K stopped by the fence": (N, M, K).
fn refusing_apps(progress: &str) -> (usize, usize, usize) {
    let line = progress
        .lines()
        .find(|l| l.contains("apps refuse to issue, "))
        .unwrap_or_else(|| panic!("no line on the apps after the rejoin:\n{progress}"));
    let numbers: Vec<usize> =
        line.rsplit(';').next().unwrap().split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    match numbers[..] {
        [refusing, running, stopped] => (refusing, running, stopped),
        _ => panic!("unexpected line {line:?}"),
    }
}

/// Whether this machine lets the tests make network namespaces; says
/// `SKIPPED` and why when it does not.
fn network_namespaces() -> bool {
    let probe = format!("fenice-probe-{}", std::process::id());
    let why = match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(out) if out.status.success() => {
            Command::new("ip").args(["netns", "delete", &probe]).status().unwrap();
            return true;
        }
        Ok(out) => format!("no network namespaces here: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("no `ip` (iproute2) to make network namespaces: {e}"),
    };
    eprintln!("SKIPPED: {why}");
    false
}

/// The network namespaces a `--fault network-cut` lab makes, still there.
fn labs_namespaces() -> Vec<String> {
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let names = String::from_utf8_lossy(&listed.stdout).into_owned();
    let ours = |n: &&str| n.starts_with("fenice-") && (n.ends_with("-world") || n.ends_with("-westpole"));
    names.lines().filter_map(|l| l.split_whitespace().next()).filter(ours).map(str::to_owned).collect()
}

/// What a lab run printed and reported; its report directory.
struct LabRun {
    stdout: String,
    stderr: String,
    report: Value,
    dir: tempfile::TempDir,
}

/// Runs a small lab (2 tenants) with `extra` arguments, checks that no secret
/// of the run shows anywhere and that it passed, and reads its report.
fn run_lab(extra: &[&str]) -> LabRun {
    let (run, passed) = run_lab_to_the_end(extra);
    assert!(passed, "the lab failed:\n{}\n{}", run.stdout, run.stderr);
    run
}

/// [`run_lab`], whether or not its checks passed; and whether they did (its exit code).
fn run_lab_to_the_end(extra: &[&str]) -> (LabRun, bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["lab", "--tenants", "2", "--work-seconds", "3", "--parallelism", "2", "--keep"])
        .args(extra)
        .arg("--report-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env("FENICE_LAB_PASSWORD", LAB_PASSWORD)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let kept = kept_dir(&stderr);
    no_secret_anywhere(&kept, dir.path(), &[&stdout, &stderr]);
    std::fs::remove_dir_all(&kept).unwrap();
    let report: Value = match std::fs::read(dir.path().join("lab.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(e) => panic!("no lab.json ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"),
    };
    (LabRun { stdout: stdout.into_owned(), stderr: stderr.into_owned(), report, dir }, out.status.success())
}

/// Every check of lab.json passed, and its figures are there.
fn assert_the_checks_passed(report: &Value, stdout: &str, stderr: &str) {
    assert_eq!(report["passed"], true, "{report:#}\n{stderr}");
    assert_eq!(report["tenants"], 2);
    assert!(report["invoices_issued"].as_u64().unwrap() > 0);
    for zero in ["invoices_lost", "duplicate_numbers", "sdi_duplicates"] {
        assert_eq!(report[zero], 0, "{zero}: {report:#}");
    }
    assert_every_send_once_and_one_site_active(report);
    for figure in ["detect_seconds", "rto_seconds", "rpo_seconds"] {
        let (p50, max) = (report[figure]["p50"].as_f64().unwrap(), report[figure]["max"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= max, "{figure}: {report:#}");
    }
    assert_eq!(report["failover"]["phase"], "Succeeded");
    assert!(stdout.contains("fenice lab: PASSED"), "{stdout}");
}

/// Each pending invoice was sent once, receipts came along, never two sites
/// active, and the old primary stayed fenced.
fn assert_every_send_once_and_one_site_active(report: &Value) {
    for (flag, expected) in [
        ("pending_sent_exactly_once", true),
        ("receipts_carried", true),
        ("dual_active", false),
        ("old_primary_fenced", true),
    ] {
        assert_eq!(report[flag], expected, "{flag}: {report:#}");
    }
}

const LAB_PASSWORD: &str = "lab-password-never-shown-0f3a";

/// The run's directory `--keep` left, as the lab printed it.
fn kept_dir(stderr: &str) -> std::path::PathBuf {
    let line = stderr.lines().find_map(|l| l.split("the run's files stay in ").nth(1));
    std::path::PathBuf::from(line.unwrap_or_else(|| panic!("no kept directory in:\n{stderr}")).trim())
}

/// Neither the repositories' password nor the agents' recovery key appears in
/// the terminal output (logs at info included), the reports, or any file the
/// run left but the key file itself (witness state, logs, the repositories'
/// small objects).
fn no_secret_anywhere(kept: &std::path::Path, reports: &std::path::Path, outputs: &[&str]) {
    let key_file =
        walk(kept).into_iter().find(|p| p.file_name().is_some_and(|n| n == "agent.key")).expect("the agents' key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let key = key.trim();
    let secrets = [LAB_PASSWORD, key];
    for (i, output) in outputs.iter().enumerate() {
        for secret in secrets {
            assert!(!output.contains(secret), "output {i} shows a secret");
        }
    }
    let mut scanned = 0;
    // NB: packs and base backups (megabytes of ciphertext) are left out; the
    // stores' small objects (config, key files, indexes, snapshots) are read.
    let small = |p: &std::path::PathBuf| std::fs::metadata(p).is_ok_and(|m| m.len() <= 1 << 20);
    for path in walk(kept).into_iter().chain(walk(reports)).filter(|p| *p != key_file).filter(small) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        for secret in secrets {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{} holds a secret", path.display());
        }
        scanned += 1;
    }
    assert!(scanned > 10, "only {scanned} files scanned: the run left less than expected");
}

/// Every regular file below `dir` (symlinks not followed).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(entry.path()),
                Ok(t) if t.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files
}

/// Renders `page` in headless Chromium (Debian's package, installed by
/// scripts/prerequisites.sh): the DOM once loaded, and a screenshot's pixels (RGB).
fn render(page: &std::path::Path, work: &std::path::Path) -> (String, Vec<[u8; 3]>) {
    let chromium = |args: &[&str]| {
        let out = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
            .arg(format!("--user-data-dir={}", work.join("chromium-profile").display()))
            .args(args)
            .arg(format!("file://{}", page.display()))
            .stdin(Stdio::null())
            .output()
            .expect("chromium (Debian package chromium): run scripts/prerequisites.sh");
        assert!(out.status.success(), "chromium {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    let shot = work.join("screenshot.png");
    chromium(&["--window-size=1000,900", &format!("--screenshot={}", shot.display())]);
    let file = std::io::BufReader::new(std::fs::File::open(&shot).unwrap());
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buffer).unwrap();
    let channels = frame.color_type.samples();
    assert!(channels >= 3, "a colour screenshot: {:?}", frame.color_type);
    let pixels = buffer[..frame.buffer_size()].chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
    (dom, pixels)
}

/// The picture is not blank and holds at least a bar's worth of `colour`.
fn assert_drawn(pixels: &[[u8; 3]], what: &str, colour: [u8; 3]) {
    let inked = pixels.iter().filter(|p| p.iter().any(|c| *c < 200)).count();
    assert!(inked > 2_000, "the page looks blank: {inked} dark pixels of {}", pixels.len());
    let near = |p: &[u8; 3]| p.iter().zip(colour).all(|(a, b)| a.abs_diff(b) <= 8);
    let found = pixels.iter().filter(|p| near(p)).count();
    assert!(found > 100, "{what} not drawn: {found} pixels of {colour:?}");
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
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    interrupt_a_lab(&[]);
}

#[test]
fn an_interrupted_network_cut_lab_also_removes_its_network_namespaces() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    if !network_namespaces() {
        return;
    }
    interrupt_a_lab(&["--fault", "network-cut"]);
    assert_eq!(labs_namespaces(), Vec::<String>::new(), "network namespaces left behind");
}

/// Through the operators, under a `TMPDIR` deep enough that PostgreSQL's
/// sockets under an operator's Local site would not fit a socket's path.
#[test]
fn an_interrupted_lab_through_the_operators_stops_them_and_leaves_nothing_behind() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    interrupt_a_lab(&["--operators"]);
}

/// Starts a lab of one tenant with `extra` arguments, sends it SIGINT once
/// its customers work, and checks that it stops with 130, leaving no file in
/// its temporary directory and no report.
fn interrupt_a_lab(extra: &[&str]) {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;

    // The lab's temporary directory, where every process it starts keeps its files.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let report = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["lab", "--tenants", "1"])
        .args(extra)
        .arg("--report-dir")
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
