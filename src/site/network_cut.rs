//! Cutting a Local site's network. The site's processes run in a network
//! namespace of their own, joined by one veth link to a second namespace where
//! everything else runs (the other site, the providers, whoever drives the
//! run). Cutting the link leaves every process of the site running, its
//! tenants' apps and databases still talking to each other, and none of them
//! able to reach anyone outside or be reached: the split a provider's network
//! failure makes, as opposed to its machines dying.
//!
//! NB: nothing is ever sent from the machine's own namespace to either
//! namespace's address: whoever drives the run does so from inside the second
//! namespace (`ip netns exec`).

use std::net::Ipv4Addr;
use std::process::Command;

use crate::testkit::NetNs;

/// The link's two ends (a /30 of their own: the namespaces are private, so
/// another run's link may use the same addresses).
const WORLD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const SITE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
const PREFIX: u8 = 30;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cutting a site's network needs network namespaces, and `ip {args}` failed: {message}; \
         run as root on Linux with iproute2 installed (scripts/prerequisites.sh installs it)"
    )]
    Ip { args: String, message: String },

    #[error("{0} does not describe a site link (expected `WORLD SITE WORLD_IF`)")]
    Malformed(String),
}

/// Two namespaces and the link between them.
#[derive(Debug)]
pub struct SiteLink {
    world: String,
    site: String,
    /// The link's end in the world namespace: setting it down cuts the site off.
    world_if: String,
    /// Made by this value (and removed when it is dropped), or only described.
    owned: bool,
}

impl SiteLink {
    /// Makes `fenice-TAG-world` and `fenice-TAG-SITE`, joined by a veth link,
    /// with loopback up in both. `tag` keeps two runs apart (a process id).
    pub fn create(tag: &str, site: &str) -> Result<Self, Error> {
        let link = Self {
            world: format!("fenice-{tag}-world"),
            site: format!("fenice-{tag}-{site}"),
            // NB: interface names have at most 15 bytes.
            world_if: format!("fw{}", short(tag)),
            owned: true,
        };
        let site_if = format!("fs{}", short(tag));
        let (world, site) = (link.world.as_str(), link.site.as_str());
        let (world_addr, site_addr) = (format!("{WORLD_ADDR}/{PREFIX}"), format!("{SITE_ADDR}/{PREFIX}"));
        ip(&["netns", "add", world])?;
        ip(&["netns", "add", site])?;
        ip(&["link", "add", &link.world_if, "type", "veth", "peer", "name", &site_if])?;
        ip(&["link", "set", &link.world_if, "netns", world])?;
        ip(&["link", "set", &site_if, "netns", site])?;
        ip(&["-n", world, "addr", "add", &world_addr, "dev", &link.world_if])?;
        ip(&["-n", site, "addr", "add", &site_addr, "dev", &site_if])?;
        for (ns, dev) in [(world, link.world_if.as_str()), (site, site_if.as_str()), (world, "lo"), (site, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(link)
    }

    /// Removes the namespaces of runs whose process is gone (`fenice-PID-…`
    /// with no process PID: killed before it could remove them); returns their names.
    pub fn remove_stale() -> Result<Vec<String>, Error> {
        let listed = ip(&["netns", "list"])?;
        let stale: Vec<String> = listed
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| run_of(name).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()))
            .map(str::to_owned)
            .collect();
        for name in &stale {
            ip(&["netns", "delete", name])?;
        }
        Ok(stale)
    }

    /// The world namespace's name, for `ip netns exec`.
    pub fn world(&self) -> &str {
        &self.world
    }

    /// The address the site reaches the world at.
    pub fn world_addr(&self) -> Ipv4Addr {
        WORLD_ADDR
    }

    /// The site's own address, which its servers listen on.
    pub fn site_addr(&self) -> Ipv4Addr {
        SITE_ADDR
    }

    /// Opens the site's namespace, to start its processes in.
    pub fn site_namespace(&self) -> std::io::Result<NetNs> {
        NetNs::open(&self.site)
    }

    /// Cuts the site off: run from the world namespace.
    pub fn cut(&self) -> Result<(), Error> {
        ip(&["-n", &self.world, "link", "set", &self.world_if, "down"]).map(drop)
    }

    /// Joins the site again.
    pub fn heal(&self) -> Result<(), Error> {
        ip(&["-n", &self.world, "link", "set", &self.world_if, "up"]).map(drop)
    }

    /// How a process started inside the world namespace finds the link again.
    pub fn describe(&self) -> String {
        format!("{} {} {}", self.world, self.site, self.world_if)
    }

    /// The link [`describe`](Self::describe) described; dropping it removes nothing.
    pub fn described(text: &str) -> Result<Self, Error> {
        let mut words = text.split_whitespace().map(str::to_owned);
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some(world), Some(site), Some(world_if), None) => Ok(Self { world, site, world_if, owned: false }),
            _ => Err(Error::Malformed(text.to_owned())),
        }
    }
}

impl Drop for SiteLink {
    fn drop(&mut self) {
        if self.owned {
            // The link goes with the namespaces; a process still inside keeps its own.
            for ns in [&self.site, &self.world] {
                if let Err(e) = ip(&["netns", "delete", ns]) {
                    tracing::warn!(error = %e, "removing a network namespace");
                }
            }
        }
    }
}

/// The last 10 characters of `tag`, so interface names stay short.
fn short(tag: &str) -> &str {
    &tag[tag.len().saturating_sub(10)..]
}

/// The process a run's namespace (`fenice-PID-world`, `fenice-PID-SITE`) belongs to.
fn run_of(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix("fenice-")?.split_once('-')?;
    pid.parse().ok()
}

/// Runs `ip ARGS`; what it printed.
fn ip(args: &[&str]) -> Result<String, Error> {
    let failed = |message: String| Error::Ip { args: args.join(" "), message };
    let out = Command::new("ip").args(args).output().map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_link_is_found_again_and_a_malformed_one_is_named() {
        let link = SiteLink::described("fenice-7-world fenice-7-westpole fw7").unwrap();
        assert_eq!(
            (link.world(), link.describe().as_str()),
            ("fenice-7-world", "fenice-7-world fenice-7-westpole fw7")
        );
        assert!(!link.owned, "a described link is not removed by whoever found it");
        let e = SiteLink::described("fenice-7-world").unwrap_err();
        assert!(e.to_string().contains("`WORLD SITE WORLD_IF`"), "{e}");
        assert_eq!(short("123456789012"), "3456789012");
        assert_eq!((run_of("fenice-4242-world"), run_of("fenice-4242-westpole")), (Some(4242), Some(4242)));
        assert_eq!((run_of("fenice-probe-1"), run_of("other-4242-world")), (None, None));
    }

    #[test]
    fn the_namespaces_of_a_run_that_died_are_removed_and_those_of_a_live_one_kept() {
        // NB: above pid_max (32768, or 4194304 at most): no process has it.
        let (dead, live) = ("fenice-4194305-world", format!("fenice-{}-world", std::process::id()));
        if let Err(e) = ip(&["netns", "add", dead]) {
            eprintln!("SKIPPED: {e}");
            return;
        }
        ip(&["netns", "add", &live]).unwrap();
        let removed = SiteLink::remove_stale().unwrap();
        let listed = ip(&["netns", "list"]).unwrap();
        ip(&["netns", "delete", &live]).unwrap();
        assert!(removed.contains(&dead.to_owned()), "{removed:?}");
        assert!(!listed.contains(dead), "{listed}");
        assert!(listed.contains(&live), "a live run's namespace is kept: {listed}");
    }
}
