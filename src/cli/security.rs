//! `ringblast keygen`, and the options that make `serve`, `get` and `list` authenticate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::keys::{self, ClientSecurity, ServerSecurity, ServerTrust};
use crate::protocol::noise::StaticKey;

#[derive(Args)]
pub struct KeygenArgs {
    /// Where the private key goes (created mode 600; never replaced); the public key goes to
    /// FILE.pub, one line to hand to the other side.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The comment on the public key's line (who or what it is) [default: user@host].
    #[arg(long)]
    comment: Option<String>,
    /// Write a pre-shared key instead (32 random bytes): give the same file to the server
    /// (serve --psk) and to its clients (get --psk).
    #[arg(long, conflicts_with = "comment")]
    psk: bool,
}

impl KeygenArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        if self.psk {
            keys::write_psk(&self.out)?;
            println!(
                "pre-shared key written to {} (mode 600): give the same file to the server (serve --psk) and its clients (get --psk)",
                self.out.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let comment = self.comment.unwrap_or_else(default_comment);
        let key = keys::write_key_pair(&self.out, &comment)?;
        println!(
            "private key written to {} (mode 600), public key to {}.pub:\n{} {comment}\nA server lists its clients' public keys in its --authorized file; a client pins its server's with --server-key FILE.pub (or trusts it on first use).",
            self.out.display(),
            self.out.display(),
            keys::public_line(&key.public)
        );
        Ok(ExitCode::SUCCESS)
    }
}

fn default_comment() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "ringblast".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// `serve`'s: who may connect and read what.
#[derive(Args, Default)]
pub struct ServeSecurityArgs {
    /// This server's private key (ringblast keygen --out FILE): clients prove they talk to
    /// it. Needed with --authorized; optional with --psk.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Authenticate every client: the file lists the public keys that may connect, one per
    /// line (`ringblast-x25519 HEX [files=NAME,PREFIX*,...] [comment]`; without files= a key
    /// reads every file). Clients then see only what their key may read, and every datagram
    /// either way is encrypted and authenticated (AES-128-GCM). Without it (or --psk) the
    /// server is open: anyone who can reach the port reads every file.
    #[arg(long, value_name = "FILE", requires = "identity")]
    authorized: Option<PathBuf>,
    /// Authenticate with a pre-shared key (ringblast keygen --psk --out FILE): only clients
    /// holding the same file connect, and read every file; every datagram is sealed.
    #[arg(long, value_name = "FILE", conflicts_with = "authorized")]
    psk: Option<PathBuf>,
}

impl ServeSecurityArgs {
    pub fn security(&self) -> anyhow::Result<Option<Arc<ServerSecurity>>> {
        let psk = self.psk.as_deref().map(keys::read_psk).transpose()?;
        let authorized = self
            .authorized
            .as_deref()
            .map(keys::read_authorized)
            .transpose()?;
        let identity = match (&self.identity, &authorized, &psk) {
            (Some(path), Some(_), _) | (Some(path), _, Some(_)) => keys::read_private(path)?,
            (Some(_), None, None) => anyhow::bail!(
                "--identity needs --authorized FILE (the client keys that may connect) or --psk FILE"
            ),
            // Pre-shared key alone: a key for this run.
            (None, _, Some(_)) => StaticKey::generate(),
            (None, _, None) => return Ok(None),
        };
        Ok(Some(Arc::new(ServerSecurity {
            identity,
            authorized,
            psk,
        })))
    }
}

/// `get`'s and `list`'s: who this client is and how it knows the server.
#[derive(Args, Default, Clone)]
pub struct ClientSecurityArgs {
    /// This client's private key (ringblast keygen --out FILE): the server must list its
    /// public key (FILE.pub) in --authorized. Every datagram is then sealed.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// The server's public key (its FILE.pub): it and no other is accepted. Without it the
    /// known-servers file decides (the key first met is recorded; a changed key is refused).
    #[arg(long, value_name = "FILE.pub")]
    server_key: Option<PathBuf>,
    /// The known-servers file [default: $RINGBLAST_KNOWN_SERVERS, else
    /// ~/.config/ringblast/known_servers].
    #[arg(long, value_name = "FILE", conflicts_with = "server_key")]
    known_servers: Option<PathBuf>,
    /// Authenticate with a pre-shared key (the server's serve --psk file). With it, holding
    /// the key is the server's proof unless --server-key pins it too.
    #[arg(long, value_name = "FILE")]
    psk: Option<PathBuf>,
}

impl ClientSecurityArgs {
    /// The client's security for `server`, or `None` (open) when no option asks for it.
    pub fn security(&self, server: SocketAddr) -> anyhow::Result<Option<Arc<ClientSecurity>>> {
        if self.identity.is_none() && self.psk.is_none() {
            if self.server_key.is_some() || self.known_servers.is_some() {
                anyhow::bail!(
                    "--server-key and --known-servers need --identity FILE or --psk FILE"
                );
            }
            return Ok(None);
        }
        let psk = self.psk.as_deref().map(keys::read_psk).transpose()?;
        let identity = match &self.identity {
            Some(p) => keys::read_private(p)?,
            None => StaticKey::generate(),
        };
        let trust = match (&self.server_key, &psk) {
            (Some(p), _) => ServerTrust::Pinned(keys::read_public(p)?),
            (None, Some(_)) if self.known_servers.is_none() => ServerTrust::Psk,
            (None, _) => {
                let path = match &self.known_servers {
                    Some(p) => p.clone(),
                    None => keys::default_known_servers().ok_or_else(|| {
                        anyhow::anyhow!("no known-servers file: set HOME, or give --server-key or --known-servers")
                    })?,
                };
                ServerTrust::known(path, server.to_string())?
            }
        };
        Ok(Some(Arc::new(ClientSecurity {
            identity,
            psk,
            trust,
        })))
    }
}
