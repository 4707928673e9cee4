//! API tokens: `rucat_` and 43 characters of base64url, 256 random bits. Rucat keeps only
//! their SHA-256 (`sha256:<hex>`), each with a user name and a role; a presented token is hashed
//! and its digest compared with the configured ones in constant time.
//!
//! Tokens come from the configuration file (`[[auth.tokens]]`) and from a tokens file
//! (`[[tokens]]` entries) that is read again whenever its content changes, so that tokens are
//! added and revoked without a restart (a Kubernetes Secret mounted as a file is updated in
//! place). A tokens file that no longer parses is reported and the last good one kept.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use tracing::{error, info};

use super::{check_user_name, AuthError, Identity, Role};

/// What every API token starts with (so it is told from a JWT, and found by secret scanners).
pub const TOKEN_PREFIX: &str = "rucat_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// A token's SHA-256. Equality is constant-time, so looking a digest up never tells by its
/// timing how much of a configured one it matched.
#[derive(Clone, Copy)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        TokenHash(bytes)
    }

    /// Parses `sha256:` and 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("token hash {text:?} must start with \"sha256:\""))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "token hash {text:?} must be \"sha256:\" and 64 hex digits"
            ));
        }
        let mut bytes = [0; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("token hash {text:?} is not hex"))?;
        }
        Ok(TokenHash(bytes))
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for TokenHash {}

impl Hash for TokenHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

impl Serialize for TokenHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        TokenHash::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A new random token and its hash. The token is shown once and never kept.
pub fn generate() -> Result<(SecretString, TokenHash), String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_owned())?;
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = TokenHash::of(&token);
    Ok((SecretString::from(token), hash))
}

/// One configured token: whose it is and what they may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub user: String,
    #[serde(default)]
    pub role: Role,
    pub hash: TokenHash,
}

/// A tokens file: `[[tokens]]` entries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

type TokenSet = HashMap<TokenHash, Identity>;

fn token_set<'a>(entries: impl IntoIterator<Item = &'a TokenEntry>) -> Result<TokenSet, String> {
    let mut set = TokenSet::new();
    for entry in entries {
        check_user_name(&entry.user)?;
        let identity = Identity {
            user: entry.user.clone(),
            role: entry.role,
        };
        if let Some(other) = set.insert(entry.hash, identity) {
            if other.user != entry.user || other.role != entry.role {
                return Err(format!(
                    "token hash {} is given to two users ({} and {})",
                    entry.hash, other.user, entry.user
                ));
            }
        }
    }
    Ok(set)
}

/// The configured tokens, with the tokens file kept current.
pub struct TokenStore {
    inline: Vec<TokenEntry>,
    file: Option<PathBuf>,
    current: RwLock<Arc<TokenSet>>,
    /// The digest of the tokens file's content last read (good or not).
    seen: Mutex<Option<[u8; 32]>>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("tokens", &self.len())
            .field("file", &self.file)
            .finish()
    }
}

impl TokenStore {
    /// Reads the tokens file now: one that is missing or does not parse is an error.
    pub fn open(inline: Vec<TokenEntry>, file: Option<PathBuf>) -> Result<Self, String> {
        let mut seen = None;
        let from_file = match &file {
            Some(path) => {
                let (entries, digest) = read_tokens_file(path)?;
                seen = Some(digest);
                entries
            }
            None => Vec::new(),
        };
        let set = token_set(inline.iter().chain(&from_file))?;
        Ok(TokenStore {
            inline,
            file,
            current: RwLock::new(Arc::new(set)),
            seen: Mutex::new(seen),
        })
    }

    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<TokenSet> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    pub fn identify(&self, token: &str) -> Result<Identity, AuthError> {
        self.current()
            .get(&TokenHash::of(token))
            .cloned()
            .ok_or(AuthError::UnknownToken)
    }

    /// Reads the tokens file again if its content changed. Returns whether the tokens changed.
    pub fn reload_if_changed(&self) -> bool {
        let Some(path) = &self.file else {
            return false;
        };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(error) => {
                error!(path = %path.display(), %error, "cannot read the tokens file; keeping the tokens read before");
                return false;
            }
        };
        let digest = sha256(&text);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == Some(digest) {
                return false;
            }
            *seen = Some(digest);
        }
        let set = parse_tokens_file(path, &text)
            .and_then(|entries| token_set(self.inline.iter().chain(&entries)));
        match set {
            Ok(set) => {
                info!(path = %path.display(), tokens = set.len(), "tokens file read again");
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
                true
            }
            Err(error) => {
                error!(path = %path.display(), %error, "the tokens file changed but is not valid; keeping the tokens read before");
                false
            }
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

fn read_tokens_file(path: &Path) -> Result<(Vec<TokenEntry>, [u8; 32]), String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
    let entries = parse_tokens_file(path, &text)?;
    Ok((entries, sha256(&text)))
}

fn parse_tokens_file(path: &Path, text: &[u8]) -> Result<Vec<TokenEntry>, String> {
    let text = std::str::from_utf8(text)
        .map_err(|_| format!("the tokens file {} is not UTF-8", path.display()))?;
    let file: TokensFile =
        toml::from_str(text).map_err(|e| format!("invalid tokens file {}: {e}", path.display()))?;
    Ok(file.tokens)
}

/// The configuration entry for a token, as `rucat token create` prints it.
pub fn entry_toml(entry: &TokenEntry, table: &str) -> String {
    format!(
        "[[{table}]]\nuser = {}\nrole = \"{}\"\nhash = \"{}\"\n",
        toml_string(&entry.user),
        entry.role.as_str(),
        entry.hash
    )
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn entry(user: &str, role: Role, token: &str) -> TokenEntry {
        TokenEntry {
            user: user.into(),
            role,
            hash: TokenHash::of(token),
        }
    }

    #[test]
    fn tokens_are_long_random_and_hash_round_trips() {
        let (a, hash) = generate().expect("random");
        let (b, _) = generate().expect("random");
        let a = a.expose_secret();
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43, "256 bits in base64url");
        assert_ne!(a, b.expose_secret());
        assert_eq!(TokenHash::of(a), hash);
        assert_eq!(TokenHash::parse(&hash.to_string()), Ok(hash));
        assert!(TokenHash::parse("sha256:abc").is_err());
        assert!(TokenHash::parse(&hash.to_string().replace("sha256:", "md5:")).is_err());
        assert!(TokenHash::parse(&format!("sha256:{}", "g".repeat(64))).is_err());
    }

    #[test]
    fn tokens_identify_their_user_and_nothing_else() {
        let store = TokenStore::open(
            vec![
                entry("alice", Role::User, "rucat_a"),
                entry("root", Role::Admin, "rucat_r"),
            ],
            None,
        )
        .expect("valid");
        assert_eq!(
            store.identify("rucat_a"),
            Ok(Identity {
                user: "alice".into(),
                role: Role::User
            })
        );
        assert!(store.identify("rucat_r").expect("admin").is_admin());
        assert_eq!(store.identify("rucat_b"), Err(AuthError::UnknownToken));
        assert_eq!(store.identify(""), Err(AuthError::UnknownToken));
    }

    #[test]
    fn one_hash_for_two_users_is_refused() {
        let refused = TokenStore::open(
            vec![
                entry("alice", Role::User, "rucat_x"),
                entry("bob", Role::User, "rucat_x"),
            ],
            None,
        );
        assert!(refused.is_err());
    }

    #[test]
    fn the_tokens_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens.toml");
        let write = |entries: &[TokenEntry]| {
            let text: String = entries.iter().map(|e| entry_toml(e, "tokens")).collect();
            std::fs::write(&path, text).expect("write");
        };
        write(&[entry("alice", Role::User, "rucat_a")]);
        let store = TokenStore::open(vec![], Some(path.clone())).expect("valid file");
        assert!(store.identify("rucat_a").is_ok());
        assert!(!store.reload_if_changed(), "unchanged");

        write(&[entry("bob", Role::Admin, "rucat_b")]);
        assert!(store.reload_if_changed());
        assert_eq!(store.identify("rucat_a"), Err(AuthError::UnknownToken));
        assert_eq!(store.identify("rucat_b").expect("bob").user, "bob");

        // A broken file keeps the last good tokens.
        std::fs::write(&path, "[[tokens]]\nuser = ").expect("write");
        assert!(!store.reload_if_changed());
        assert_eq!(store.identify("rucat_b").expect("still bob").user, "bob");
        // A missing one too.
        std::fs::remove_file(&path).expect("remove");
        assert!(!store.reload_if_changed());
        assert!(store.identify("rucat_b").is_ok());
    }

    #[test]
    fn a_bad_tokens_file_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens.toml");
        assert!(TokenStore::open(vec![], Some(path.clone()))
            .expect_err("missing")
            .contains("cannot read"));
        std::fs::write(&path, "[[tokens]]\nuser = \"a\"\nhash = \"sha256:00\"\n").expect("write");
        assert!(TokenStore::open(vec![], Some(path.clone()))
            .expect_err("bad hash")
            .contains("64 hex digits"));
        std::fs::write(&path, "").expect("write");
        assert!(TokenStore::open(vec![], Some(path))
            .expect("an empty file: no tokens")
            .is_empty());
    }

    #[test]
    fn printed_entries_parse_back() {
        let e = entry("o\"dd \\ user", Role::Admin, "rucat_z");
        let file: TokensFile = toml::from_str(&entry_toml(&e, "tokens")).expect("valid TOML");
        assert_eq!(file.tokens, vec![e]);
    }
}
