//! Key files (issue 23; the formats, not wired into `serve` and `get` yet): a static key pair
//! (`FILE`, private, mode 600, and `FILE.pub`, one line), the server's authorized client keys
//! (one per line, with the files each may read), and the client's known servers (trust on
//! first use, a loud refusal when a key changes, as ssh does).
//!
//! ```text
//! FILE       ringblast-x25519-private 5f0c...(64 hex digits)
//! FILE.pub   ringblast-x25519 9a1b...(64 hex digits) alice@lab
//! authorized ringblast-x25519 9a1b... files=gen-*,100MiB.bin alice@lab
//!            ringblast-x25519 77c0... bob (every file)
//! known      lab-server:6969 ringblast-x25519 3e4f...
//! ```

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

use crate::protocol::noise::StaticKey;

/// The first word of a public key line.
pub const PUBLIC_TAG: &str = "ringblast-x25519";
/// The first word of a private key file.
pub const PRIVATE_TAG: &str = "ringblast-x25519-private";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A public key as a line shows it (`ringblast-x25519 HEX`).
pub fn public_line(key: &[u8; 32]) -> String {
    format!("{PUBLIC_TAG} {}", hex(key))
}

/// A public key from `ringblast-x25519 HEX`; the rest of the line is returned.
pub fn parse_public(line: &str) -> Result<([u8; 32], &str), String> {
    let line = line.trim();
    let rest = line
        .strip_prefix(PUBLIC_TAG)
        .filter(|r| r.starts_with(char::is_whitespace))
        .ok_or_else(|| format!("expected `{PUBLIC_TAG} KEY`"))?
        .trim_start();
    let (key, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let key = unhex32(key).ok_or("the key is not 64 hex digits")?;
    Ok((key, rest.trim()))
}

/// Writes a new key pair to `path` (private, created mode 600; an existing file is never
/// replaced) and `path.pub` (the public line and `comment`).
pub fn write_key_pair(path: &Path, comment: &str) -> anyhow::Result<StaticKey> {
    let key = StaticKey::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never replaced)",
                path.display()
            )
        })?;
    writeln!(f, "{PRIVATE_TAG} {}", hex(&key.private))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let public = path.with_extension(match path.extension() {
        Some(e) => format!("{}.pub", e.to_string_lossy()),
        None => "pub".to_string(),
    });
    std::fs::write(&public, format!("{} {comment}\n", public_line(&key.public)))
        .with_context(|| format!("cannot write {}", public.display()))?;
    Ok(key)
}

/// Reads a private key file; refused when others may read it (as ssh does).
pub fn read_private(path: &Path) -> anyhow::Result<StaticKey> {
    let md = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if md.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "{}: permissions {:o} are too open, a private key must be readable by its owner only (chmod 600)",
            path.display(),
            md.permissions().mode() & 0o777
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let private = text
        .trim()
        .strip_prefix(PRIVATE_TAG)
        .and_then(|r| unhex32(r.trim()))
        .with_context(|| {
            format!(
                "{} is not a ringblast private key (ringblast keygen)",
                path.display()
            )
        })?;
    Ok(StaticKey {
        public: x25519_public(&private),
        private,
    })
}

/// The public key of an X25519 private key.
fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    // A handshake with ourselves would do; snow exposes no scalar multiplication, but its
    // resolver's DH does.
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let mut dh = DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("X25519");
    dh.set(private);
    dh.pubkey().try_into().expect("a 32-byte public key")
}

/// One line of a server's authorized keys: a client key and what it may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    pub key: [u8; 32],
    /// `None`: every file; else exact names or prefixes ending in `*`.
    pub files: Option<Vec<String>>,
    pub comment: String,
}

impl AuthorizedKey {
    pub fn may_read(&self, name: &str) -> bool {
        match &self.files {
            None => true,
            Some(pats) => pats.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => p == name,
            }),
        }
    }
}

/// The server's authorized keys (`serve --authorized FILE`).
#[derive(Debug, Clone, Default)]
pub struct Authorized {
    pub keys: Vec<AuthorizedKey>,
}

impl Authorized {
    /// Parses the file's text: one key per line, `#` comments and blank lines ignored; an
    /// error names the line.
    pub fn parse(text: &str) -> Result<Authorized, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, rest) = parse_public(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            let (files, comment) = match rest.strip_prefix("files=") {
                Some(r) => {
                    let (list, comment) = r.split_once(char::is_whitespace).unwrap_or((r, ""));
                    let pats: Vec<String> = list
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(str::to_string)
                        .collect();
                    if pats.is_empty() {
                        return Err(format!("line {}: files= names no file", i + 1));
                    }
                    (Some(pats), comment.trim().to_string())
                }
                None => (None, rest.to_string()),
            };
            keys.push(AuthorizedKey {
                key,
                files,
                comment,
            });
        }
        Ok(Authorized { keys })
    }

    /// The entry of `key`, if it is authorized.
    pub fn find(&self, key: &[u8; 32]) -> Option<&AuthorizedKey> {
        self.keys.iter().find(|k| &k.key == key)
    }
}

/// What the known-servers file says of a server's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The key recorded for this server.
    Known,
    /// No key recorded: trust on first use (the caller records it and says so).
    New,
    /// Another key than the one recorded: refuse, loudly.
    Changed { recorded: [u8; 32] },
}

/// The client's known servers (`~/.config/ringblast/known_servers`): `SERVER KEY` per line.
#[derive(Debug, Clone, Default)]
pub struct KnownServers {
    entries: Vec<(String, [u8; 32])>,
}

impl KnownServers {
    pub fn parse(text: &str) -> Result<KnownServers, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (server, rest) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("line {}: expected `SERVER {PUBLIC_TAG} KEY`", i + 1))?;
            let (key, _) = parse_public(rest).map_err(|e| format!("line {}: {e}", i + 1))?;
            entries.push((server.to_string(), key));
        }
        Ok(KnownServers { entries })
    }

    pub fn check(&self, server: &str, key: &[u8; 32]) -> Trust {
        match self.entries.iter().find(|(s, _)| s == server) {
            None => Trust::New,
            Some((_, k)) if k == key => Trust::Known,
            Some((_, k)) => Trust::Changed { recorded: *k },
        }
    }

    /// Records a server first met; its line, to append to the file.
    pub fn remember(&mut self, server: &str, key: &[u8; 32]) -> String {
        self.entries.push((server.to_string(), *key));
        format!("{server} {}\n", public_line(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_pair_is_written_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let key = write_key_pair(&path, "alice@lab").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let read = read_private(&path).unwrap();
        assert_eq!((read.private, read.public), (key.private, key.public));
        let public = std::fs::read_to_string(dir.path().join("id.pub")).unwrap();
        assert_eq!(public.lines().count(), 1);
        let (k, comment) = parse_public(&public).unwrap();
        assert_eq!((k, comment), (key.public, "alice@lab"));
        // Never replaced; too open refused.
        assert!(write_key_pair(&path, "x").is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private(&path).unwrap_err().to_string();
        assert!(e.contains("too open"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        assert!(read_private(&path).is_err());
    }

    #[test]
    fn authorized_keys_name_what_each_may_read() {
        let (a, b) = (StaticKey::generate().public, StaticKey::generate().public);
        let text = format!(
            "# lab clients\n{} files=gen-*,100MiB.bin alice@lab\n\n{} bob\n",
            public_line(&a),
            public_line(&b)
        );
        let auth = Authorized::parse(&text).unwrap();
        let alice = auth.find(&a).unwrap();
        assert!(alice.may_read("gen-1GiB") && alice.may_read("100MiB.bin"));
        assert!(!alice.may_read("secret.bin") && !alice.may_read("100MiB.bin.old"));
        assert_eq!(alice.comment, "alice@lab");
        let bob = auth.find(&b).unwrap();
        assert!(bob.may_read("anything") && bob.comment == "bob");
        assert!(auth.find(&StaticKey::generate().public).is_none());
        for (bad, why) in [
            (
                "ringblast-x25519 abcd",
                "line 1: the key is not 64 hex digits",
            ),
            ("ssh-ed25519 AAAA", "line 1: expected"),
            (
                &format!("\n{} files= x", public_line(&a)),
                "line 2: files= names no file",
            ),
        ] {
            let e = Authorized::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn known_servers_trust_on_first_use_and_refuse_a_changed_key() {
        let (k1, k2) = (StaticKey::generate().public, StaticKey::generate().public);
        let mut known = KnownServers::parse("").unwrap();
        assert_eq!(known.check("lab:6969", &k1), Trust::New);
        let line = known.remember("lab:6969", &k1);
        assert_eq!(known.check("lab:6969", &k1), Trust::Known);
        assert_eq!(
            known.check("lab:6969", &k2),
            Trust::Changed { recorded: k1 }
        );
        assert_eq!(known.check("other:6969", &k1), Trust::New);
        // What was appended reads back the same.
        let again = KnownServers::parse(&line).unwrap();
        assert_eq!(again.check("lab:6969", &k1), Trust::Known);
        assert!(KnownServers::parse("lab:6969")
            .unwrap_err()
            .contains("line 1"));
    }
}
