//! Key files: a static key pair (`FILE`, private, mode 600, and `FILE.pub`, one line), the
//! server's authorized client keys (one per line, with the files each may read), the client's
//! known servers (trust on first use, a loud refusal when a key changes, as ssh does), and a
//! pre-shared key (`keygen --psk`) for the simplest case; and what each side holds of them
//! ([`ServerSecurity`], [`ClientSecurity`]).
//!
//! ```text
//! FILE       ringblast-x25519-private 5f0c...(64 hex digits)
//! FILE.pub   ringblast-x25519 9a1b...(64 hex digits) alice@lab
//! authorized ringblast-x25519 9a1b... files=gen-*,100MiB.bin alice@lab
//!            ringblast-x25519 77c0... bob (every file)
//! known      lab-server:6969 ringblast-x25519 3e4f...
//! psk        ringblast-psk 0d9e...(64 hex digits)
//! ```

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

use crate::protocol::noise::{StaticKey, PSK_LEN};

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
    let mut f = create_private(path)?;
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

/// A new file for a secret: mode 600 from its creation, never replacing one.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never replaced)",
                path.display()
            )
        })
}

/// Reads a private key file; refused when others may read it (as ssh does).
pub fn read_private(path: &Path) -> anyhow::Result<StaticKey> {
    let private = read_secret(
        path,
        PRIVATE_TAG,
        "a private key",
        "a ringblast private key (ringblast keygen)",
    )?;
    Ok(StaticKey {
        public: x25519_public(&private),
        private,
    })
}

/// The 32 bytes of a secret file `TAG HEX` (`what` names it in the refusal of a file others may
/// read, `kind` in the refusal of one that is not such a file).
fn read_secret(path: &Path, tag: &str, what: &str, kind: &str) -> anyhow::Result<[u8; 32]> {
    let md = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if md.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "{}: permissions {:o} are too open, {what} must be readable by its owner only (chmod 600)",
            path.display(),
            md.permissions().mode() & 0o777
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.trim()
        .strip_prefix(tag)
        .and_then(|r| unhex32(r.trim()))
        .with_context(|| format!("{} is not {kind}", path.display()))
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

/// The first word of a pre-shared key file.
pub const PSK_TAG: &str = "ringblast-psk";

/// Writes a new pre-shared key to `path` (created mode 600; an existing file is never
/// replaced): give the same file to the server (`serve --psk`) and its clients (`get --psk`).
pub fn write_psk(path: &Path) -> anyhow::Result<()> {
    let key: [u8; PSK_LEN] = rand::random();
    let mut f = create_private(path)?;
    writeln!(f, "{PSK_TAG} {}", hex(&key))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads a pre-shared key file; refused when others may read it.
pub fn read_psk(path: &Path) -> anyhow::Result<[u8; PSK_LEN]> {
    read_secret(
        path,
        PSK_TAG,
        "a pre-shared key",
        "a ringblast pre-shared key (ringblast keygen --psk)",
    )
}

/// Reads a public key file (`FILE.pub`, or any line `ringblast-x25519 HEX`).
pub fn read_public(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    parse_public(line)
        .map(|(k, _)| k)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads the server's authorized keys file.
pub fn read_authorized(path: &Path) -> anyhow::Result<Authorized> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Authorized::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// A key's short name for logs and errors: its first 16 hex digits.
pub fn fingerprint(key: &[u8; 32]) -> String {
    hex(&key[..8])
}

/// What a server that authenticates its clients holds (`serve --identity --authorized`, or
/// `--psk`).
#[derive(Debug)]
pub struct ServerSecurity {
    pub identity: StaticKey,
    /// Who may read what; `None` in pre-shared-key mode (the key alone authorizes, every file).
    pub authorized: Option<Authorized>,
    pub psk: Option<[u8; PSK_LEN]>,
}

impl ServerSecurity {
    /// What the client holding `key` may read: `None` if it may not connect at all.
    pub fn client(&self, key: &[u8; 32]) -> Option<AuthorizedKey> {
        match &self.authorized {
            Some(a) => a.find(key).cloned(),
            // Pre-shared key: finishing the handshake proved the client holds it.
            None => Some(AuthorizedKey {
                key: *key,
                files: None,
                comment: "pre-shared key".into(),
            }),
        }
    }
}

/// How a client decides the server's key is the right one.
#[derive(Debug)]
pub enum ServerTrust {
    /// `--server-key FILE.pub`: this key, and no other.
    Pinned([u8; 32]),
    /// The known-servers file: trust on first use (recorded), refuse a changed key.
    Known {
        path: std::path::PathBuf,
        /// How the server is named in the file (`host:port` as given).
        name: String,
        known: std::sync::Mutex<KnownServers>,
    },
    /// Pre-shared key without a pin: holding the key is the server's proof.
    Psk,
}

/// What a client that authenticates holds (`get --identity`, `--psk`).
#[derive(Debug)]
pub struct ClientSecurity {
    pub identity: StaticKey,
    pub psk: Option<[u8; PSK_LEN]>,
    pub trust: ServerTrust,
}

/// The default known-servers file: `$RINGBLAST_KNOWN_SERVERS`, else
/// `$XDG_CONFIG_HOME/ringblast/known_servers`, else `~/.config/ringblast/known_servers`.
pub fn default_known_servers() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("RINGBLAST_KNOWN_SERVERS") {
        return Some(p.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("ringblast").join("known_servers"))
}

impl ServerTrust {
    /// The known-servers file at `path` (absent: empty), the server named `name` in it.
    pub fn known(path: std::path::PathBuf, name: String) -> anyhow::Result<ServerTrust> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let known =
            KnownServers::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(ServerTrust::Known {
            path,
            name,
            known: std::sync::Mutex::new(known),
        })
    }

    /// Whether the server that proved `key` in the handshake is the one meant; a key met for
    /// the first time is recorded (and said, once). The error is for the user, loud.
    pub fn check(&self, key: &[u8; 32]) -> Result<(), String> {
        match self {
            ServerTrust::Psk => Ok(()),
            ServerTrust::Pinned(k) if k == key => Ok(()),
            ServerTrust::Pinned(k) => Err(format!(
                "the server's key is {}, not the pinned {} (--server-key): refusing to talk to it (someone may be impersonating it)",
                fingerprint(key),
                fingerprint(k)
            )),
            ServerTrust::Known { path, name, known } => {
                let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
                match known.check(name, key) {
                    Trust::Known => Ok(()),
                    Trust::Changed { recorded } => Err(format!(
                        "WARNING: THE KEY OF SERVER {name} HAS CHANGED: it was {}, it is now {}. Someone may be impersonating it, or it was given a new key. Refusing to go on. If the change is expected, remove its line from {}.",
                        fingerprint(&recorded),
                        fingerprint(key),
                        path.display()
                    )),
                    Trust::New => {
                        let line = known.remember(name, key);
                        if let Some(dir) = path.parent() {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        let wrote = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .and_then(|mut f| f.write_all(line.as_bytes()));
                        match wrote {
                            Ok(()) => tracing::warn!(
                                "first contact with {name}: its key {} is now recorded in {} (trust on first use; a changed key will be refused)",
                                fingerprint(key),
                                path.display()
                            ),
                            Err(e) => tracing::warn!(
                                "first contact with {name}: its key {} could not be recorded in {}: {e}",
                                fingerprint(key),
                                path.display()
                            ),
                        }
                        Ok(())
                    }
                }
            }
        }
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
    fn the_known_servers_file_records_a_first_key_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("known_servers");
        let (k1, k2) = (StaticKey::generate().public, StaticKey::generate().public);
        let t = ServerTrust::known(path.clone(), "lab:6969".into()).unwrap();
        t.check(&k1).unwrap();
        t.check(&k1).unwrap();
        // Recorded once, and a new process reads it back.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let t = ServerTrust::known(path.clone(), "lab:6969".into()).unwrap();
        t.check(&k1).unwrap();
        let e = t.check(&k2).unwrap_err();
        assert!(e.contains("HAS CHANGED") && e.contains("lab:6969"), "{e}");
        let pinned = ServerTrust::Pinned(k1);
        assert!(pinned.check(&k1).is_ok());
        assert!(pinned.check(&k2).unwrap_err().contains("not the pinned"));
    }

    #[test]
    fn a_pre_shared_key_is_written_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk");
        write_psk(&path).unwrap();
        let k = read_psk(&path).unwrap();
        assert_ne!(k, [0; PSK_LEN]);
        assert!(write_psk(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_psk(&path)
            .unwrap_err()
            .to_string()
            .contains("too open"));
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
