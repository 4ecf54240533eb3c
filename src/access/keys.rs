//! API keys: where they come from, how they are kept (SHA-256 digests only) and how a
//! presented key is matched (in constant time).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AccessError, Caller, Credentials, Rate, Scope};
use crate::secret::Secret;
use crate::transport::Subject;

/// Shortest key accepted in clear: anything shorter can be guessed.
pub const MIN_KEY_LENGTH: usize = 16;

/// One key, as the key file or the configuration lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who holds the key; shows in logs and usage, never the key itself.
    pub name: String,
    /// The key in clear. Either this or `sha256`.
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub key: Secret,
    /// The SHA-256 digest of the key, in hex, so that the file holds no usable secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Under mutual TLS, the subject of the client certificate that identifies this caller
    /// instead of a key, e.g. `CN=indexer,O=Example` (either order, any spacing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// What the key may do: `query`, `write`, `admin`.
    pub scopes: Vec<Scope>,
    /// Collections the key may touch; absent for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// The key's own steady rate, overriding the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// The key's own burst, overriding the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// A key file: one `[[keys]]` table per key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// The keys.
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

/// What a key grants, without the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    name: Arc<str>,
    scopes: BTreeSet<Scope>,
    collections: Option<Arc<BTreeSet<String>>>,
    requests_per_minute: Option<u32>,
    burst: Option<u32>,
}

impl Identity {
    /// The caller this identity makes, its rate merged over the server's.
    pub fn caller(&self, default_rate: Option<Rate>) -> Caller {
        Caller {
            name: Arc::clone(&self.name),
            authenticated: true,
            scopes: self.scopes.clone(),
            collections: self.collections.clone(),
            limit_key: Arc::from(format!("key:{}", self.name)),
            rate: Rate::merged(default_rate, self.requests_per_minute, self.burst),
        }
    }
}

/// What identifies a caller: a key, known by its digest, or a certificate subject.
enum Credential {
    Digest([u8; 32]),
    Subject(Subject),
}

struct KnownKey {
    credential: Credential,
    identity: Identity,
}

/// The keys in force.
#[derive(Default)]
pub struct KeyRing {
    keys: Vec<KnownKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|key| &*key.identity.name).collect();
        f.debug_struct("KeyRing").field("names", &names).finish()
    }
}

impl KeyRing {
    /// Builds the ring from the configured keys and the key file, checking every entry.
    pub fn load(configured: &[KeyEntry], file: Option<&Path>) -> Result<KeyRing, AccessError> {
        let mut entries = configured.to_vec();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                AccessError::InvalidKeys(format!("cannot read {}: {error}", path.display()))
            })?;
            let parsed: KeyFile = toml::from_str(&text).map_err(|error| {
                AccessError::InvalidKeys(format!("{}: {}", path.display(), error.message()))
            })?;
            entries.extend(parsed.keys);
        }
        KeyRing::from_entries(&entries)
    }

    /// Builds the ring from entries, checking each and refusing duplicate names or keys.
    pub fn from_entries(entries: &[KeyEntry]) -> Result<KeyRing, AccessError> {
        let mut names = HashSet::new();
        let mut digests: HashMap<[u8; 32], &str> = HashMap::new();
        let mut subjects: Vec<(&Subject, &str)> = Vec::new();
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let known = known_key(entry)?;
            if !names.insert(entry.name.clone()) {
                return Err(invalid(&entry.name, "the name is used by another key"));
            }
            keys.push(known);
        }
        for (entry, known) in entries.iter().zip(&keys) {
            let first = match &known.credential {
                Credential::Digest(digest) => digests.insert(*digest, &entry.name),
                Credential::Subject(subject) => {
                    let first = subjects
                        .iter()
                        .find(|(listed, _)| listed.matches(subject))
                        .map(|(_, name)| *name);
                    subjects.push((subject, &entry.name));
                    first
                }
            };
            if let Some(first) = first {
                return Err(invalid(
                    &entry.name,
                    &format!("the same credential is already listed as {first:?}"),
                ));
            }
        }
        Ok(KeyRing { keys })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the ring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The identity of the key presented, if it is known. Every stored digest is compared, in
    /// constant time, so that the time taken tells nothing about which bytes matched.
    pub fn lookup(&self, presented: &str) -> Option<&Identity> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if let Credential::Digest(known) = &key.credential
                && bool::from(known.ct_eq(&digest))
            {
                found = Some(&key.identity);
            }
        }
        found
    }

    /// The identity a verified client certificate's subject names, if an entry lists it.
    pub fn lookup_subject(&self, presented: &Subject) -> Option<&Identity> {
        self.keys.iter().find_map(|key| match &key.credential {
            Credential::Subject(subject) if presented.matches(subject) => Some(&key.identity),
            _ => None,
        })
    }
}

/// The key a call presents, from `authorization: Bearer <key>` or `x-api-key: <key>`.
pub fn presented_key(credentials: Credentials<'_>) -> Result<&str, AccessError> {
    let bearer = credentials
        .authorization
        .map(|value| {
            let text = std::str::from_utf8(value)
                .map_err(|_| AccessError::MalformedKey("authorization is not text"))?;
            let (scheme, token) = text
                .trim()
                .split_once(' ')
                .ok_or(AccessError::MalformedKey(
                    "authorization must be `Bearer <key>`",
                ))?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AccessError::MalformedKey(
                    "authorization must use the Bearer scheme",
                ));
            }
            checked_token(token.trim())
        })
        .transpose()?;
    let header = credentials
        .api_key
        .map(|value| {
            std::str::from_utf8(value)
                .map_err(|_| AccessError::MalformedKey("x-api-key is not text"))
                .and_then(|text| checked_token(text.trim()))
        })
        .transpose()?;
    match (bearer, header) {
        (Some(bearer), Some(header)) if bearer != header => Err(AccessError::MalformedKey(
            "authorization and x-api-key carry different keys",
        )),
        (Some(key), _) | (None, Some(key)) => Ok(key),
        (None, None) => Err(AccessError::MissingKey),
    }
}

fn checked_token(token: &str) -> Result<&str, AccessError> {
    if token.is_empty() {
        return Err(AccessError::MalformedKey("the key is empty"));
    }
    if token.chars().any(|character| !character.is_ascii_graphic()) {
        return Err(AccessError::MalformedKey(
            "the key holds spaces or non-printable characters",
        ));
    }
    Ok(token)
}

fn known_key(entry: &KeyEntry) -> Result<KnownKey, AccessError> {
    let name = entry.name.trim();
    if name.is_empty() {
        return Err(AccessError::InvalidKeys("a key has an empty name".into()));
    }
    let credential = match (entry.key.is_empty(), &entry.sha256, &entry.subject) {
        (false, None, None) => {
            let key = entry.key.expose();
            if key.len() < MIN_KEY_LENGTH {
                return Err(invalid(
                    name,
                    &format!("the key is shorter than {MIN_KEY_LENGTH} characters"),
                ));
            }
            checked_token(key).map_err(|error| invalid(name, &error.to_string()))?;
            Credential::Digest(Sha256::digest(key.as_bytes()).into())
        }
        (true, Some(hex), None) => Credential::Digest(parse_digest(hex).ok_or_else(|| {
            invalid(
                name,
                "sha256 must be 64 hexadecimal digits (e.g. `printf %s KEY | sha256sum`)",
            )
        })?),
        (true, None, Some(subject)) => {
            Credential::Subject(Subject::parse(subject).ok_or_else(|| {
                invalid(
                    name,
                    "subject must list TYPE=value attributes, e.g. \"CN=indexer,O=Example\"",
                )
            })?)
        }
        (true, None, None) => return Err(invalid(name, "give key, sha256 or subject")),
        _ => {
            return Err(invalid(
                name,
                "give one of key, sha256 or subject, not several",
            ));
        }
    };
    if entry.scopes.is_empty() {
        return Err(invalid(
            name,
            "list at least one scope (query, write, admin)",
        ));
    }
    let collections = match &entry.collections {
        None => None,
        Some(collections) if collections.is_empty() => {
            return Err(invalid(
                name,
                "an empty collections list would allow nothing; omit it to allow all",
            ));
        }
        Some(collections) => Some(Arc::new(collections.iter().cloned().collect())),
    };
    if entry.requests_per_minute == Some(0) || entry.burst == Some(0) {
        return Err(invalid(
            name,
            "requests_per_minute and burst must be at least 1",
        ));
    }
    Ok(KnownKey {
        credential,
        identity: Identity {
            name: Arc::from(name),
            scopes: entry.scopes.iter().copied().collect(),
            collections,
            requests_per_minute: entry.requests_per_minute,
            burst: entry.burst,
        },
    })
}

fn invalid(name: &str, reason: &str) -> AccessError {
    AccessError::InvalidKeys(format!("key {name:?}: {reason}"))
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, key: &str, scopes: &[Scope]) -> KeyEntry {
        KeyEntry {
            name: name.into(),
            key: Secret::new(key),
            sha256: None,
            subject: None,
            scopes: scopes.to_vec(),
            collections: None,
            requests_per_minute: None,
            burst: None,
        }
    }

    #[test]
    fn a_ring_counts_its_keys() {
        let empty = KeyRing::from_entries(&[]).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        let one = KeyRing::from_entries(&[entry("a", "a-key-0123456789", &[Scope::Query])]);
        let one = one.unwrap();
        assert!(!one.is_empty());
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn keys_match_in_clear_or_by_digest_and_nothing_else_does() {
        let hex: String = Sha256::digest(b"reader-key-0123456789")
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let ring = KeyRing::from_entries(&[
            entry("writer", "writer-key-0123456789", &[Scope::Write]),
            KeyEntry {
                key: Secret::default(),
                sha256: Some(hex.to_uppercase()),
                ..entry("reader", "", &[Scope::Query])
            },
        ])
        .unwrap();
        assert_eq!(
            &*ring.lookup("writer-key-0123456789").unwrap().name,
            "writer"
        );
        assert_eq!(
            &*ring.lookup("reader-key-0123456789").unwrap().name,
            "reader"
        );
        assert!(ring.lookup("reader-key-012345678").is_none());
        assert!(ring.lookup("").is_none());
    }

    fn subject_entry(name: &str, subject: &str) -> KeyEntry {
        KeyEntry {
            key: Secret::default(),
            subject: Some(subject.into()),
            ..entry(name, "", &[Scope::Query])
        }
    }

    #[test]
    fn a_certificate_subject_names_its_entry_and_never_stands_for_a_key() {
        let ring = KeyRing::from_entries(&[
            subject_entry("indexer", "CN=indexer, O=Example"),
            entry("writer", "writer-key-0123456789", &[Scope::Write]),
        ])
        .unwrap();
        let presented = Subject::parse("O=Example,CN=indexer").unwrap();
        assert_eq!(&*ring.lookup_subject(&presented).unwrap().name, "indexer");
        let other = Subject::parse("O=Example,CN=writer").unwrap();
        assert!(ring.lookup_subject(&other).is_none());
        // The subject's text is no key, and a key's holder is no subject.
        assert!(ring.lookup("CN=indexer, O=Example").is_none());
        assert!(
            ring.lookup_subject(&Subject::parse("CN=writer").unwrap())
                .is_none()
        );
    }

    #[test]
    fn subject_entries_are_checked_like_keys() {
        let cases = [
            (vec![subject_entry("a", "indexer")], "TYPE=value"),
            (
                vec![KeyEntry {
                    subject: Some("CN=a".into()),
                    ..entry("a", "long-enough-key-000", &[Scope::Query])
                }],
                "not several",
            ),
            (
                vec![
                    subject_entry("b", "CN=x,O=y"),
                    subject_entry("a", "O=y, CN=x"),
                ],
                "already listed as \"b\"",
            ),
        ];
        for (entries, expected) in cases {
            let error = KeyRing::from_entries(&entries).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("\"a\""), "{error}");
        }
    }

    #[test]
    fn bad_entries_are_refused_with_the_key_name() {
        let cases = [
            (
                vec![entry("a", "", &[Scope::Query])],
                "give key, sha256 or subject",
            ),
            (vec![entry("a", "short", &[Scope::Query])], "shorter"),
            (vec![entry("a", "long-enough-key-000", &[])], "scope"),
            (
                vec![
                    entry("a", "long-enough-key-000", &[Scope::Query]),
                    entry("a", "long-enough-key-001", &[Scope::Query]),
                ],
                "name is used",
            ),
            (
                vec![
                    entry("a", "long-enough-key-000", &[Scope::Query]),
                    entry("b", "long-enough-key-000", &[Scope::Query]),
                ],
                "already listed as \"a\"",
            ),
            (
                vec![KeyEntry {
                    sha256: Some("abc".into()),
                    key: Secret::default(),
                    ..entry("a", "", &[Scope::Query])
                }],
                "64 hexadecimal",
            ),
            (
                vec![KeyEntry {
                    collections: Some(vec![]),
                    ..entry("a", "long-enough-key-000", &[Scope::Query])
                }],
                "empty collections",
            ),
            (
                vec![entry("a", "long enough key 000", &[Scope::Query])],
                "spaces",
            ),
            (
                vec![entry("a", &"k".repeat(MIN_KEY_LENGTH - 1), &[Scope::Query])],
                "shorter",
            ),
            (
                vec![KeyEntry {
                    requests_per_minute: Some(0),
                    ..entry("a", "long-enough-key-000", &[Scope::Query])
                }],
                "at least 1",
            ),
            (
                vec![KeyEntry {
                    burst: Some(0),
                    ..entry("a", "long-enough-key-000", &[Scope::Query])
                }],
                "at least 1",
            ),
        ];
        for (entries, expected) in cases {
            let error = KeyRing::from_entries(&entries).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("\"a\""), "{error}");
            assert!(!error.contains("long-enough-key"), "a key leaked: {error}");
        }
        let shortest = entry("a", &"k".repeat(MIN_KEY_LENGTH), &[Scope::Query]);
        assert!(KeyRing::from_entries(&[shortest]).is_ok());
    }

    #[test]
    fn both_metadata_forms_are_read_and_bad_ones_named() {
        let read = |authorization: Option<&str>, api_key: Option<&str>| {
            presented_key(Credentials {
                authorization: authorization.map(str::as_bytes),
                api_key: api_key.map(str::as_bytes),
                certificate_subject: None,
            })
            .map(str::to_string)
        };
        assert_eq!(read(Some("Bearer abc"), None).unwrap(), "abc");
        assert_eq!(read(Some("bearer  abc "), None).unwrap(), "abc");
        assert_eq!(read(None, Some("abc")).unwrap(), "abc");
        assert_eq!(read(Some("Bearer abc"), Some("abc")).unwrap(), "abc");
        assert!(matches!(read(None, None), Err(AccessError::MissingKey)));
        for (authorization, api_key) in [
            (Some("Basic abc"), None),
            (Some("abc"), None),
            (Some("Bearer "), None),
            (Some("Bearer abc"), Some("abd")),
            (None, Some("")),
        ] {
            assert!(
                matches!(
                    read(authorization, api_key),
                    Err(AccessError::MalformedKey(_))
                ),
                "{authorization:?} {api_key:?}"
            );
        }
    }

    #[test]
    fn the_readme_key_file_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme.find("# keys.toml\n").unwrap();
        let end = start + readme[start..].find("```").unwrap();
        let file: KeyFile = toml::from_str(&readme[start..end]).unwrap();
        let ring = KeyRing::from_entries(&file.keys).unwrap();
        assert_eq!(ring.len(), 3);
        assert!(ring.lookup("dr_live_support_bot_5c1e0a9b").is_some());
    }

    #[test]
    fn a_key_file_parses_with_overrides_and_collections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(
            &path,
            r#"
[[keys]]
name = "support-bot"
key = "support-bot-key-0001"
scopes = ["query"]
collections = ["handbook"]
requests_per_minute = 600
burst = 50
"#,
        )
        .unwrap();
        let ring = KeyRing::load(&[], Some(&path)).unwrap();
        let caller = ring
            .lookup("support-bot-key-0001")
            .unwrap()
            .caller(Some(Rate {
                per_minute: 60,
                burst: 5,
            }));
        assert_eq!(
            caller.rate,
            Some(Rate {
                per_minute: 600,
                burst: 50
            })
        );
        assert!(caller.check_collection("handbook").is_ok());
        assert!(caller.check_collection("default").is_err());
        assert_eq!(&*caller.limit_key, "key:support-bot");

        std::fs::write(&path, "[[keys]]\nname = \"x\"\nkey = \"k\"\nscope = []\n").unwrap();
        let error = KeyRing::load(&[], Some(&path)).unwrap_err().to_string();
        assert!(error.contains("keys.toml"), "{error}");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn write(text: &str) -> Result<tempfile::NamedTempFile, TestCaseError> {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new()
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        file.write_all(text.as_bytes())
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        Ok(file)
    }

    /// Text that looks more or less like a key file: TOML fragments of every field, with
    /// wrong types, odd values and noise.
    fn file_text() -> impl Strategy<Value = String> {
        let fragment = prop_oneof![
            Just("[[keys]]\n".to_string()),
            Just("[keys]\n".to_string()),
            "name = \"[a-z\\x00 ]{0,6}\"\n",
            "key = \"[ -~]{0,24}\"\n",
            "sha256 = \"[0-9a-fA-Fg]{0,66}\"\n",
            Just("scopes = [\"query\", \"write\"]\n".to_string()),
            Just("scopes = [\"root\"]\n".to_string()),
            Just("scopes = []\n".to_string()),
            Just("collections = []\n".to_string()),
            "collections = \\[\"[a-z]{0,4}\"\\]\n",
            "requests_per_minute = -?[0-9]{1,12}\n",
            "burst = [0-9]{1,3}\n",
            Just("burst = \"ten\"\n".to_string()),
            Just("unknown = 1\n".to_string()),
            ".{0,12}",
        ];
        prop::collection::vec(fragment, 0..12).prop_map(|parts| parts.concat())
    }

    /// Valid entries with distinct names and distinct keys.
    fn entries() -> impl Strategy<Value = Vec<KeyEntry>> {
        let scope = prop::sample::select(vec![Scope::Query, Scope::Write, Scope::Admin]);
        let entry = (
            "[A-Za-z0-9_-]{16,40}",
            prop::collection::btree_set(scope, 1..4),
            prop::option::of(prop::collection::vec("[a-z0-9_.-]{1,8}", 1..3)),
            prop::option::of(1u32..10_000),
            prop::option::of(1u32..100),
        );
        prop::collection::vec(entry, 0..5).prop_map(|entries| {
            entries
                .into_iter()
                .enumerate()
                .map(
                    |(index, (key, scopes, collections, requests_per_minute, burst))| KeyEntry {
                        name: format!("key-{index}"),
                        // The index makes every key distinct.
                        key: Secret::new(format!("{key}{index:04}")),
                        sha256: None,
                        subject: None,
                        scopes: scopes.into_iter().collect(),
                        collections,
                        requests_per_minute,
                        burst,
                    },
                )
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_key_file_loads_or_is_refused_without_panicking(text in file_text()) {
            let file = write(&text)?;
            if let Err(error) = KeyRing::load(&[], Some(file.path())) {
                prop_assert!(matches!(error, AccessError::InvalidKeys(_)));
            }
        }

        #[test]
        fn valid_entries_round_trip_through_the_file(entries in entries()) {
            let text = toml::to_string(&KeyFile { keys: entries.clone() })
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(
                toml::from_str::<KeyFile>(&text).ok(),
                Some(KeyFile { keys: entries.clone() })
            );
            let file = write(&text)?;
            let ring = KeyRing::load(&[], Some(file.path()))
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(ring.len(), entries.len());
            for entry in &entries {
                let identity = ring.lookup(entry.key.expose());
                prop_assert!(identity.is_some(), "{} not found", entry.name);
                let identity = identity.cloned();
                let identity = identity.as_ref();
                prop_assert_eq!(identity.map(|found| &*found.name), Some(entry.name.as_str()));
                prop_assert_eq!(
                    identity.map(|found| found.scopes.iter().copied().collect::<Vec<_>>()),
                    Some(entry.scopes.iter().copied().collect::<BTreeSet<_>>().into_iter().collect())
                );
                prop_assert_eq!(identity.and_then(|found| found.requests_per_minute), entry.requests_per_minute);
            }
            prop_assert!(ring.lookup("not one of the keys at all").is_none());
        }
    }
}
