//! Secrets in the configuration: API keys, database URLs and passwords, kept out of logs.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A secret (an API key, a database URL with its password) that never shows in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Returns the secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns true when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

/// Returns the key in `file` (its first line, trimmed) when a file is named, else `inline`.
/// An unreadable or empty file is an error naming the file, never the key.
pub fn key_from(inline: &Secret, file: Option<&Path>) -> Result<Secret, String> {
    let Some(path) = file else {
        return Ok(inline.clone());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the API key file {}: {error}", path.display()))?;
    let key = text.lines().next().unwrap_or_default().trim().to_string();
    if key.is_empty() {
        return Err(format!("the API key file {} is empty", path.display()));
    }
    Ok(Secret::new(key))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("<unset>")
        } else {
            f.write_str("<redacted>")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        assert_eq!(format!("{:?}", Secret::new("sk-live")), "<redacted>");
        assert_eq!(format!("{:?}", Secret::default()), "<unset>");
    }
}
