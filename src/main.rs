use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    return_large_buffers_to_the_system();
    let cli = fenice::cli::Cli::parse();
    log_to_stderr();
    match fenice::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fenice: {e:#}");
            fenice::cli::exit_code(&e)
        }
    }
}

/// Logs go to stderr, filtered by RUST_LOG (default: info); stdout stays for
/// command output.
fn log_to_stderr() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Packs and the largest chunks are buffers of 4 to 16 MiB. glibc's adaptive threshold
/// would soon serve them from per-thread heaps that never shrink, holding tens
/// of MiB per thread after a backup has freed them; mapped directly, they go
/// back to the system when freed.
fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
