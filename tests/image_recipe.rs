//! The image recipe (Dockerfile), checked for what can be checked without a
//! container engine: the stages the manifests and the renderer name, a build
//! from Cargo.lock exactly, numeric non-root users, base images with a version,
//! and a build context that sends only what the build reads.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(file: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Each stage: (base image, name, instructions).
fn stages() -> Vec<(String, String, Vec<String>)> {
    let mut stages: Vec<(String, String, Vec<String>)> = Vec::new();
    let text = read("Dockerfile").replace("\\\n", " ");
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0] == "FROM" {
            assert_eq!(words.get(2).map(|w| w.to_ascii_uppercase()), Some("AS".into()), "unnamed stage: {line}");
            stages.push((words[1].to_owned(), words[3].to_owned(), Vec::new()));
        } else {
            stages.last_mut().expect("an instruction before FROM").2.push(line.to_owned());
        }
    }
    stages
}

#[test]
fn the_recipe_builds_the_images_the_manifests_name() {
    let stages = stages();
    let names: Vec<&str> = stages.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names, ["build", "fenice", "fenice-postgres"]);
    // The operator's manifests and the renderer name these images.
    assert!(read("manifests/kustomization.yaml").contains("- name: fenice\n"));
    let images = fenice::site::kubernetes::Images::of_this_build();
    assert!(images.postgres.starts_with("15-"), "{images:?}");
    let postgres = &stages.iter().find(|(_, name, _)| name == "fenice-postgres").unwrap().0;
    assert!(postgres.ends_with(":15-bookworm"), "fenice-postgres must be PostgreSQL 15: {postgres}");
}

#[test]
fn the_binary_is_built_from_the_lockfile_on_the_pinned_toolchain() {
    let stages = stages();
    let (base, _, steps) = &stages[0];
    let toolchain = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    assert!(base.contains(&format!("rust:{toolchain}-")), "the build stage must use Rust {toolchain}: {base}");
    assert!(steps.iter().any(|s| s.starts_with("RUN cargo build --release --locked")), "{steps:?}");
}

#[test]
fn every_image_runs_as_a_numeric_non_root_user_on_a_versioned_base() {
    for (base, name, steps) in stages() {
        assert!(base.contains(':') && !base.ends_with(":latest"), "stage {name}: base {base} has no version");
        if name == "build" {
            continue;
        }
        let user = steps
            .iter()
            .rev()
            .find_map(|s| s.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("stage {name} runs as root"));
        let uid: u32 = user
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("stage {name}: USER {user} is not numeric"));
        assert_ne!(uid, 0, "stage {name} runs as root");
        assert!(
            steps.iter().any(|s| s.starts_with("COPY --from=build /src/target/release/fenice ")),
            "{name}: {steps:?}"
        );
    }
}

#[test]
fn the_build_context_leaves_out_what_the_build_does_not_read() {
    let ignored: Vec<String> = read(".dockerignore").lines().map(str::to_owned).collect();
    for heavy in ["target", ".git"] {
        assert!(ignored.iter().any(|l| l == heavy), ".dockerignore must leave out {heavy}");
    }
    // What the build copies must not be ignored.
    for copied in ["src", "Cargo.toml", "Cargo.lock"] {
        assert!(!ignored.iter().any(|l| l == copied), ".dockerignore leaves out {copied}, which the build needs");
    }
}
