//! Where the repository password and the recovery key come from: the
//! environment, a file, or a prompt on a terminal; never the command line.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use zeroize::Zeroizing;

use crate::repo::keyfile::{Passphrase, RecoveryKey};
use crate::repo::repository::Unlock;

/// How to unlock the repository.
#[derive(Args, Debug, Clone)]
pub struct UnlockArgs {
    /// Read the password from this file (first line). Otherwise FENICE_PASSWORD,
    /// otherwise a prompt on a terminal.
    #[arg(long, env = "FENICE_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Unlock with the offline recovery key in this file instead of a password.
    #[arg(long, env = "FENICE_RECOVERY_KEY_FILE", conflicts_with = "password_file")]
    pub recovery_key_file: Option<PathBuf>,
}

impl UnlockArgs {
    pub fn unlock(&self) -> anyhow::Result<Unlock> {
        if let Some(path) = &self.recovery_key_file {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading recovery key file {}", path.display()))?,
            );
            return Ok(Unlock::Recovery(RecoveryKey::from_text(&text)?));
        }
        Ok(Unlock::Passphrase(self.password("repository password: ")?))
    }

    /// The password, from file, FENICE_PASSWORD or prompt.
    pub fn password(&self, prompt: &str) -> anyhow::Result<Passphrase> {
        password_from(self.password_file.as_ref(), "FENICE_PASSWORD", prompt)
    }
}

/// A password from `file` (its first line), else the variable `env`, else a
/// prompt on the terminal.
pub fn password_from(file: Option<&PathBuf>, env: &str, prompt: &str) -> anyhow::Result<Passphrase> {
    if let Some(path) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading password file {}", path.display()))?,
        );
        let first = text.lines().next().unwrap_or_default();
        if first.is_empty() {
            bail!("password file {} is empty", path.display());
        }
        return Ok(Passphrase::new(first.to_owned()));
    }
    if let Ok(text) = std::env::var(env) {
        let text = Zeroizing::new(text);
        if !text.is_empty() {
            return Ok(Passphrase::new(text.to_string()));
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: set {env} or pass a password file (no terminal to ask on)");
    }
    prompt_password(prompt)
}

/// Asks on the terminal, without echo.
fn prompt_password(prompt: &str) -> anyhow::Result<Passphrase> {
    let text = Zeroizing::new(rpassword::prompt_password(prompt).context("reading the password from the terminal")?);
    if text.is_empty() {
        bail!("empty password");
    }
    Ok(Passphrase::new(text.to_string()))
}

/// Reads a new password: file, FENICE_NEW_PASSWORD, or a prompt asked twice.
pub fn new_password(file: Option<&PathBuf>) -> anyhow::Result<Passphrase> {
    if file.is_some() || std::env::var("FENICE_NEW_PASSWORD").is_ok_and(|p| !p.is_empty()) {
        return password_from(file, "FENICE_NEW_PASSWORD", "");
    }
    if !std::io::stdin().is_terminal() {
        bail!("no new password: set FENICE_NEW_PASSWORD or pass --new-password-file (no terminal to ask on)");
    }
    let first = Zeroizing::new(rpassword::prompt_password("new password: ")?);
    let second = Zeroizing::new(rpassword::prompt_password("new password again: ")?);
    if first != second {
        bail!("the two passwords differ");
    }
    if first.is_empty() {
        bail!("empty password");
    }
    Ok(Passphrase::new(first.to_string()))
}
